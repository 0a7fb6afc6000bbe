//! Named parameters on a device and their AdamW optimiser: the one implementation the DiT
//! ([`crate::model::Dit`]) and the classifier ([`crate::classifier::Classifier`]) train with.
//!
//! A [`ParameterSet`] holds each parameter's value and, while it is trained, its gradient and
//! AdamW moments. [`ParameterSet::adamw_step`] clips by the global gradient norm and updates
//! every trained parameter; asking for a name the set does not hold is a
//! [`GpuError::UnknownParameter`], never a panic or a silent `None`.

use std::collections::BTreeMap;

use crate::context::GpuError;
use crate::cpu::AdamW;
use crate::device::Device;
use crate::model::HostWeights;

/// A parameter on a device, with its gradient and AdamW moments when it is trained.
pub struct Parameter<D: Device> {
    /// PyTorch-style (or PEFT) name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub value: D::Buffer,
    /// Gradient, first and second moments (trained parameters only).
    pub training: Option<[D::Buffer; 3]>,
}

impl<D: Device> Parameter<D> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The gradient buffer, while the parameter is trained.
    pub fn gradient(&self) -> Option<&D::Buffer> {
        self.training.as_ref().map(|[gradient, _, _]| gradient)
    }
}

/// Parameters by name, in the order they were added, with the AdamW step count.
pub struct ParameterSet<D: Device> {
    parameters: Vec<Parameter<D>>,
    index: BTreeMap<String, usize>,
    step: u32,
}

impl<D: Device> Default for ParameterSet<D> {
    fn default() -> Self {
        ParameterSet { parameters: Vec::new(), index: BTreeMap::new(), step: 0 }
    }
}

impl<D: Device> ParameterSet<D> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a frozen parameter holding `value` and returns its id (its position).
    pub fn add(&mut self, name: &str, shape: &[usize], value: D::Buffer) -> usize {
        let id = self.parameters.len();
        self.index.insert(name.to_string(), id);
        self.parameters.push(Parameter { name: name.to_string(), shape: shape.to_vec(), value, training: None });
        id
    }

    /// The id of the parameter called `name`.
    pub fn id(&self, name: &str) -> Result<usize, GpuError> {
        self.index.get(name).copied().ok_or_else(|| GpuError::UnknownParameter(name.to_string()))
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Result<&Parameter<D>, GpuError> {
        Ok(&self.parameters[self.id(name)?])
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.parameters.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.parameters.is_empty()
    }

    /// The parameters in the order they were added.
    pub fn iter(&self) -> std::slice::Iter<'_, Parameter<D>> {
        self.parameters.iter()
    }

    /// Trains the parameters `trained` picks (allocating gradients and zero moments), freezes the
    /// others, and restarts the step count.
    pub fn set_trainable(&mut self, device: &D, trained: impl Fn(&Parameter<D>) -> bool) {
        for parameter in &mut self.parameters {
            let len = parameter.len();
            parameter.training = trained(parameter).then(|| [device.zeros(len), device.zeros(len), device.zeros(len)]);
        }
        self.step = 0;
    }

    /// True when every parameter is trained.
    pub fn all_trained(&self) -> bool {
        self.parameters.iter().all(|parameter| parameter.training.is_some())
    }

    /// AdamW steps taken since [`ParameterSet::set_trainable`].
    pub fn steps(&self) -> u32 {
        self.step
    }

    /// One optimiser step on the gradients left in the trained parameters: their global L2 norm
    /// (for `hyper.max_grad_norm` clipping), then AdamW on each trained parameter in order.
    pub fn adamw_step(&mut self, device: &D, hyper: &AdamW) {
        let norm = device.zeros(1);
        for parameter in self.trained() {
            let gradient = parameter.gradient().expect("trained");
            device.sum_of_squares(gradient, None, parameter.len(), 1.0, &norm, 0, true);
        }
        self.step += 1;
        for parameter in self.trained() {
            let [gradient, m, v] = parameter.training.as_ref().expect("trained");
            device.adamw(hyper, self.step, gradient, &norm, &parameter.value, m, v, parameter.len());
        }
    }

    fn trained(&self) -> impl Iterator<Item = &Parameter<D>> {
        self.parameters.iter().filter(|parameter| parameter.training.is_some())
    }

    /// The gradient of the parameter called `name` on the host, `None` when it is not trained.
    pub fn gradient(&self, device: &D, name: &str) -> Result<Option<Vec<f32>>, GpuError> {
        let parameter = self.get(name)?;
        parameter.gradient().map(|gradient| device.download(gradient, parameter.len())).transpose()
    }

    /// The values of the parameters `keep` picks, on the host.
    pub fn to_host(&self, device: &D, keep: impl Fn(&Parameter<D>) -> bool) -> Result<HostWeights, GpuError> {
        let mut tensors = BTreeMap::new();
        for parameter in self.parameters.iter().filter(|parameter| keep(parameter)) {
            tensors.insert(
                parameter.name.clone(),
                (parameter.shape.clone(), device.download(&parameter.value, parameter.len())?),
            );
        }
        Ok(HostWeights { tensors })
    }
}

impl<D: Device> std::ops::Index<usize> for ParameterSet<D> {
    type Output = Parameter<D>;
    fn index(&self, id: usize) -> &Parameter<D> {
        &self.parameters[id]
    }
}

impl<'a, D: Device> IntoIterator for &'a ParameterSet<D> {
    type Item = &'a Parameter<D>;
    type IntoIter = std::slice::Iter<'a, Parameter<D>>;
    fn into_iter(self) -> Self::IntoIter {
        self.parameters.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuDevice;

    fn two_parameters(device: &CpuDevice) -> ParameterSet<CpuDevice> {
        let mut set = ParameterSet::new();
        set.add("a.weight", &[2, 2], device.upload(&[1.0, -2.0, 3.0, -4.0]));
        set.add("a.bias", &[2], device.upload(&[0.5, 0.25]));
        set
    }

    #[test]
    fn an_unknown_name_is_refused_with_an_error() {
        let device = CpuDevice::<f32>::new();
        let mut set = two_parameters(&device);
        set.set_trainable(&device, |_| true);
        let error = set.gradient(&device, "a.scale").expect_err("no such parameter");
        assert!(matches!(&error, GpuError::UnknownParameter(name) if name == "a.scale"), "{error}");
        assert_eq!(error.to_string(), r#"no parameter named "a.scale""#);
        assert!(matches!(set.get("a.scale"), Err(GpuError::UnknownParameter(_))));
        assert_eq!(set.id("a.bias").expect("known"), 1);
    }

    #[test]
    fn a_frozen_parameter_has_no_gradient_and_is_not_updated() {
        let device = CpuDevice::<f32>::new();
        let mut set = two_parameters(&device);
        set.set_trainable(&device, |parameter| parameter.name.ends_with(".weight"));
        assert_eq!(set.gradient(&device, "a.bias").expect("known"), None);
        assert_eq!(set.gradient(&device, "a.weight").expect("known"), Some(vec![0.0; 4]));
        assert!(!set.all_trained());
        // Gradients of ones: the weight moves against them, the frozen bias does not move.
        *set[0].gradient().expect("trained").write().expect("cpu") = vec![1.0; 4];
        let before = set.to_host(&device, |_| true).expect("cpu");
        set.adamw_step(&device, &AdamW { lr: 0.1, ..AdamW::default() });
        let after = set.to_host(&device, |_| true).expect("cpu");
        assert_eq!(set.steps(), 1);
        assert_eq!(after.tensors["a.bias"], before.tensors["a.bias"]);
        for (new, old) in after.tensors["a.weight"].1.iter().zip(&before.tensors["a.weight"].1) {
            assert!(new < old, "{new} < {old}");
        }
    }
}
