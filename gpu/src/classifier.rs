//! A small image classifier with several output heads, written once over [`Device`] like the DiT,
//! with its backward pass, AdamW training and safetensors weights that carry their own
//! configuration.
//!
//! Architecture (images `[B, C, S, S]`, `T = (S/p)²` patches of `P = C·p·p` values):
//!
//! ```text
//! patchify p×p ─► [B·T, P] ─► (linear → GELU) × patch_depth, per patch ─► X    [B, T, W]
//! hidden = GELU(flatten(X) · Hᵀ + mean_T(X) · Gᵀ + h)  (the features)  [B, hidden]
//! logits = hidden · Oᵀ + o                                              [B, Σ head outputs]
//! ```
//!
//! The flattened branch sees where things are; the mean-pooled branch sees *what* is there
//! wherever it stands, which makes the classifier robust to the small shifts a renderer's seed
//! makes. The penultimate layer is exposed as a feature vector (for Fréchet distances).
//!
//! A key design decision: the loss is computed on the host. The logits of a batch are few
//! (`B × outputs`), so downloading them, evaluating softmax cross-entropy, binary cross-entropy
//! and squared error per [`Head`] in f64 and uploading the gradient costs nothing measurable and
//! needs no new kernel; everything else runs on the device with the existing kernels (matmul
//! with bias, GELU and its backward, patchify, sum of squares, AdamW).
//!
//! Parameter names: `patch.{i}.{weight,bias}` (`[W, in]`), `hidden.{weight,bias}`
//! (`[hidden, T·W]`, flattened token-major), `pooled.weight` (`[hidden, W]`),
//! `head.{weight,bias}` (`[outputs, hidden]`); linear weights are `[out, in]` as in
//! `torch.nn.Linear`. The configuration travels in the safetensors metadata under
//! `"classifier_config"`.

use std::collections::{BTreeMap, HashMap};

use crate::context::GpuError;
use crate::cpu::{AdamW, Patches};
use crate::device::Device;
use crate::kernels::elementwise::Elementwise;
use crate::kernels::matmul::{Activation, Layout, Matmul};
use crate::kernels::noise::NoiseStream;
use crate::model::{HostWeights, WeightsError};
use crate::optim::ParameterSet;

/// The safetensors metadata key holding a classifier's configuration (JSON).
pub const CONFIG_METADATA_KEY: &str = "classifier_config";

/// How a head's outputs are turned into predictions and scored against targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// One softmax over the head's outputs; targets are a probability distribution (one-hot for
    /// a class); loss `−Σ t·log p`.
    SoftmaxCrossEntropy,
    /// An independent sigmoid per output; targets in `[0, 1]`; loss
    /// `Σ −t·log p − (1−t)·log(1−p)`.
    BinaryCrossEntropy,
    /// Raw values; loss `Σ (y − t)²`.
    SquaredError,
}

impl Loss {
    fn id(self) -> &'static str {
        match self {
            Loss::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Loss::BinaryCrossEntropy => "binary_cross_entropy",
            Loss::SquaredError => "squared_error",
        }
    }

    fn from_id(id: &str) -> Option<Self> {
        [Loss::SoftmaxCrossEntropy, Loss::BinaryCrossEntropy, Loss::SquaredError]
            .into_iter()
            .find(|loss| loss.id() == id)
    }
}

/// A contiguous slice of the logits with its own loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// What the head predicts (e.g. `group`).
    pub name: String,
    /// Its loss.
    pub loss: Loss,
    /// Its number of logits.
    pub outputs: usize,
    /// Its weight in the total loss.
    pub weight: f32,
}

impl Head {
    /// A head with weight 1.
    pub fn new(name: &str, loss: Loss, outputs: usize) -> Self {
        Head { name: name.to_string(), loss, outputs, weight: 1.0 }
    }

    /// The same head with another loss weight.
    pub fn weighted(self, weight: f32) -> Self {
        Head { weight, ..self }
    }
}

/// The shape of a [`Classifier`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    /// Image side in pixels.
    pub image_size: usize,
    /// Image channels.
    pub channels: usize,
    /// Patch side (must divide `image_size`).
    pub patch: usize,
    /// Width W of each patch's features.
    pub width: usize,
    /// Number of per-patch linear + GELU layers (at least 1).
    pub patch_depth: usize,
    /// Width of the hidden layer, which is also the feature vector.
    pub hidden: usize,
    /// The output heads, in logit order.
    pub heads: Vec<Head>,
}

impl ClassifierConfig {
    /// Patches per image.
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }
    /// Values per patch.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }
    /// Number of logits (the heads' outputs together).
    pub fn outputs(&self) -> usize {
        self.heads.iter().map(|head| head.outputs).sum()
    }
    /// Number of parameters.
    pub fn parameter_count(&self) -> usize {
        self.parameter_shapes().iter().map(|(_, shape)| shape.iter().product::<usize>()).sum()
    }

    fn geometry(&self, batch: usize) -> Patches {
        Patches { batch, channels: self.channels, size: self.image_size, patch: self.patch }
    }

    /// Says what is wrong with the configuration, if anything.
    pub fn validate(&self) -> Result<(), WeightsError> {
        let problem = if self.patch == 0 || !self.image_size.is_multiple_of(self.patch) {
            Some(format!("patch {} must divide the image size {}", self.patch, self.image_size))
        } else if self.image_size == 0 || self.channels == 0 || self.width == 0 || self.hidden == 0 {
            Some("image size, channels, width and hidden must be positive".to_string())
        } else if self.patch_depth == 0 {
            Some("patch_depth must be at least 1".to_string())
        } else if self.heads.is_empty() || self.heads.iter().any(|head| head.outputs == 0) {
            Some("there must be at least one head, each with at least one output".to_string())
        } else if self.heads.iter().any(|head| !head.weight.is_finite()) {
            Some("head weights must be finite".to_string())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(WeightsError::Format(format!("classifier configuration: {problem}"))),
            None => Ok(()),
        }
    }

    /// Every parameter's name and shape, in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (w, h) = (self.width, self.hidden);
        let mut shapes = Vec::new();
        for layer in 0..self.patch_depth {
            let inp = if layer == 0 { self.patch_len() } else { w };
            shapes.push((format!("patch.{layer}.weight"), vec![w, inp]));
            shapes.push((format!("patch.{layer}.bias"), vec![w]));
        }
        shapes.push(("hidden.weight".to_string(), vec![h, self.tokens() * w]));
        shapes.push(("hidden.bias".to_string(), vec![h]));
        shapes.push(("pooled.weight".to_string(), vec![h, w]));
        shapes.push(("head.weight".to_string(), vec![self.outputs(), h]));
        shapes.push(("head.bias".to_string(), vec![self.outputs()]));
        shapes
    }

    /// The configuration as JSON (what the weights file's metadata stores).
    pub fn to_json(&self) -> String {
        let heads: Vec<serde_json::Value> = self
            .heads
            .iter()
            .map(|head| {
                serde_json::json!({
                    "name": head.name,
                    "loss": head.loss.id(),
                    "outputs": head.outputs,
                    "weight": head.weight,
                })
            })
            .collect();
        serde_json::json!({
            "image_size": self.image_size,
            "channels": self.channels,
            "patch": self.patch,
            "width": self.width,
            "patch_depth": self.patch_depth,
            "hidden": self.hidden,
            "heads": heads,
        })
        .to_string()
    }

    /// Parses [`ClassifierConfig::to_json`]'s output (and validates it).
    pub fn from_json(json: &str) -> Result<Self, WeightsError> {
        let bad = |problem: String| WeightsError::Format(format!("classifier configuration: {problem}"));
        let value: serde_json::Value = serde_json::from_str(json).map_err(|error| bad(error.to_string()))?;
        let number = |value: &serde_json::Value, key: &str| {
            value[key].as_u64().map(|n| n as usize).ok_or_else(|| bad(format!("{key} must be a non-negative integer")))
        };
        let heads = value["heads"]
            .as_array()
            .ok_or_else(|| bad("heads must be a list".to_string()))?
            .iter()
            .map(|head| {
                let loss = head["loss"]
                    .as_str()
                    .and_then(Loss::from_id)
                    .ok_or_else(|| bad(format!("unknown loss {}", head["loss"])))?;
                Ok(Head {
                    name: head["name"].as_str().unwrap_or_default().to_string(),
                    loss,
                    outputs: number(head, "outputs")?,
                    weight: head["weight"].as_f64().unwrap_or(1.0) as f32,
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        let config = ClassifierConfig {
            image_size: number(&value, "image_size")?,
            channels: number(&value, "channels")?,
            patch: number(&value, "patch")?,
            width: number(&value, "width")?,
            patch_depth: number(&value, "patch_depth")?,
            hidden: number(&value, "hidden")?,
            heads,
        };
        config.validate()?;
        Ok(config)
    }

    /// Initial weights, deterministic in `seed`: He-normal weights (std √(2/fan_in)) for the
    /// GELU layers (the hidden layer's fan-in counts both branches), N(0, 0.01²) for the output
    /// layer, zero biases.
    pub fn init_weights(&self, seed: u64) -> HostWeights {
        let stream = NoiseStream::new(seed);
        let mut offset = 0u32;
        let hidden_fan_in = (self.tokens() + 1) * self.width;
        let mut tensors = BTreeMap::new();
        for (name, shape) in self.parameter_shapes() {
            let len: usize = shape.iter().product();
            let std = if name.ends_with(".bias") {
                0.0
            } else if name.starts_with("head.") {
                0.01
            } else if name.starts_with("hidden.") || name.starts_with("pooled.") {
                (2.0 / hidden_fan_in as f32).sqrt()
            } else {
                (2.0 / shape[1] as f32).sqrt()
            };
            let mut values = vec![0.0; len];
            if std > 0.0 {
                stream.fill(offset, std, &mut values);
                offset = offset.wrapping_add(len as u32);
            }
            tensors.insert(name, (shape, values));
        }
        HostWeights { tensors }
    }
}

/// The loss of a batch of logits against targets and its gradient w.r.t. the logits, both
/// `[batch, outputs]` row-major: the mean over the batch of Σ over heads of weight × the head's
/// loss. Computed in f64 (log-sum-exp and log-sigmoid in their stable forms).
pub fn head_loss(heads: &[Head], logits: &[f64], targets: &[f64], gradient: &mut [f64]) -> f64 {
    let outputs: usize = heads.iter().map(|head| head.outputs).sum();
    let batch = logits.len() / outputs.max(1);
    let scale = 1.0 / batch.max(1) as f64;
    let mut total = 0.0;
    for row in 0..batch {
        let mut start = row * outputs;
        for head in heads {
            let range = start..start + head.outputs;
            start += head.outputs;
            let (y, t) = (&logits[range.clone()], &targets[range.clone()]);
            let g = &mut gradient[range];
            let weight = head.weight as f64 * scale;
            match head.loss {
                Loss::SoftmaxCrossEntropy => {
                    let max = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let log_sum = max + y.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                    let mass: f64 = t.iter().sum();
                    for i in 0..y.len() {
                        let log_p = y[i] - log_sum;
                        total -= weight * t[i] * log_p;
                        g[i] = weight * (mass * log_p.exp() - t[i]);
                    }
                }
                Loss::BinaryCrossEntropy => {
                    for i in 0..y.len() {
                        // −t·log σ(y) − (1−t)·log(1−σ(y)) = softplus(y) − t·y.
                        let softplus = y[i].max(0.0) + (-y[i].abs()).exp().ln_1p();
                        total += weight * (softplus - t[i] * y[i]);
                        g[i] = weight * (sigmoid(y[i]) - t[i]);
                    }
                }
                Loss::SquaredError => {
                    for i in 0..y.len() {
                        let difference = y[i] - t[i];
                        total += weight * difference * difference;
                        g[i] = weight * 2.0 * difference;
                    }
                }
            }
        }
    }
    total
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Turns logits (`[batch, outputs]`) into predictions: softmax probabilities for softmax heads,
/// sigmoid probabilities for binary heads, the raw values for squared-error heads.
pub fn activate(heads: &[Head], logits: &[f32]) -> Vec<f32> {
    let outputs: usize = heads.iter().map(|head| head.outputs).sum();
    let mut out = logits.to_vec();
    for row in out.chunks_mut(outputs.max(1)) {
        let mut start = 0;
        for head in heads {
            let slice = &mut row[start..start + head.outputs];
            start += head.outputs;
            match head.loss {
                Loss::SoftmaxCrossEntropy => {
                    let max = slice.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    slice.iter_mut().for_each(|v| *v = (*v - max).exp());
                    let sum: f32 = slice.iter().sum();
                    slice.iter_mut().for_each(|v| *v /= sum);
                }
                Loss::BinaryCrossEntropy => slice.iter_mut().for_each(|v| *v = sigmoid(*v as f64) as f32),
                Loss::SquaredError => {}
            }
        }
    }
    out
}

/// What a forward pass returns, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierOutput {
    /// `[batch, outputs]` logits (see [`activate`]).
    pub logits: Vec<f32>,
    /// `[batch, hidden]` features (the hidden layer after GELU).
    pub features: Vec<f32>,
}

/// Errors loading or saving a classifier.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The device failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The weights or their configuration are unusable.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// Activations the backward pass needs.
struct Cache<D: Device> {
    batch: usize,
    /// The input of each patch layer (the patches, then each layer's output but the last).
    patch_inputs: Vec<D::Buffer>,
    /// Each patch layer's value before GELU.
    patch_pre: Vec<D::Buffer>,
    /// The last patch layer's output `[B·T, W]`.
    tokens: D::Buffer,
    pooled: D::Buffer,
    hidden_pre: D::Buffer,
}

struct Forward<D: Device> {
    logits: D::Buffer,
    features: D::Buffer,
    cache: Option<Cache<D>>,
}

/// A classifier on a device.
pub struct Classifier<D: Device> {
    /// The shape.
    pub config: ClassifierConfig,
    /// Every parameter, in [`ClassifierConfig::parameter_shapes`] order, with the AdamW state.
    pub parameters: ParameterSet<D>,
}

impl<D: Device> Classifier<D> {
    /// Uploads `weights`, checked against `config`.
    pub fn new(device: &D, config: ClassifierConfig, weights: &HostWeights) -> Result<Self, WeightsError> {
        config.validate()?;
        let mut parameters = ParameterSet::new();
        for (name, shape) in config.parameter_shapes() {
            let values = match weights.tensors.get(&name) {
                None => {
                    return Err(WeightsError::Tensor { name, problem: "missing".to_string() });
                }
                Some((found, _)) if *found != shape => {
                    return Err(WeightsError::Tensor { name, problem: format!("shape {found:?}, expected {shape:?}") });
                }
                Some((_, values)) => values,
            };
            parameters.add(&name, &shape, device.upload(values));
        }
        Ok(Classifier { config, parameters })
    }

    /// Loads safetensors written by [`Classifier::to_safetensors`] (the configuration comes from
    /// the metadata).
    pub fn from_safetensors(device: &D, bytes: &[u8]) -> Result<Self, WeightsError> {
        let (_, metadata) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|error| WeightsError::Format(error.to_string()))?;
        let json = metadata.metadata().as_ref().and_then(|map| map.get(CONFIG_METADATA_KEY)).ok_or_else(|| {
            WeightsError::Format(format!("no {CONFIG_METADATA_KEY:?} in the safetensors metadata: not a classifier"))
        })?;
        let config = ClassifierConfig::from_json(json)?;
        Self::new(device, config, &HostWeights::from_safetensors(bytes)?)
    }

    /// The weights on the host.
    pub fn weights(&self, device: &D) -> Result<HostWeights, GpuError> {
        self.parameters.to_host(device, |_| true)
    }

    /// The weights as safetensors, with the configuration and `metadata` in the header.
    pub fn to_safetensors(&self, device: &D, metadata: &[(&str, String)]) -> Result<Vec<u8>, ClassifierError> {
        let mut header: HashMap<String, String> =
            metadata.iter().map(|(key, value)| (key.to_string(), value.clone())).collect();
        header.insert(CONFIG_METADATA_KEY.to_string(), self.config.to_json());
        Ok(self.weights(device)?.to_safetensors(Some(header))?)
    }

    /// One of the classifier's own parameters (the names of [`ClassifierConfig::parameter_shapes`],
    /// all added by [`Classifier::new`]).
    fn own(&self, name: &str) -> &crate::optim::Parameter<D> {
        self.parameters.get(name).expect("one of the classifier's own parameter names")
    }

    fn value(&self, name: &str) -> &D::Buffer {
        &self.own(name).value
    }

    fn grad(&self, name: &str) -> Option<&D::Buffer> {
        self.own(name).gradient()
    }

    fn check_images(&self, images: &[f32]) -> Result<usize, GpuError> {
        let len = self.config.image_len();
        let batch = images.len() / len;
        if batch == 0 || images.len() != batch * len {
            return Err(GpuError::Shape(format!(
                "a batch of images is [B, {}, {}, {}] with B ≥ 1; got {} values",
                self.config.channels,
                self.config.image_size,
                self.config.image_size,
                images.len()
            )));
        }
        Ok(batch)
    }

    fn forward_internal(&self, device: &D, images: &D::Buffer, batch: usize, keep: bool) -> Forward<D> {
        let config = &self.config;
        let (t, w, h, outputs) = (config.tokens(), config.width, config.hidden, config.outputs());
        let rows = batch * t;
        let patches = device.zeros(rows * config.patch_len());
        device.patchify(config.geometry(batch), images, &patches);
        let mut x = patches;
        let (mut patch_inputs, mut patch_pre) = (Vec::new(), Vec::new());
        for layer in 0..config.patch_depth {
            let inp = if layer == 0 { config.patch_len() } else { w };
            let spec = Matmul::new(rows, w, inp, false, true);
            let weight = self.value(&format!("patch.{layer}.weight"));
            let bias = self.value(&format!("patch.{layer}.bias"));
            let out = device.zeros(rows * w);
            if keep {
                let pre = device.zeros(rows * w);
                device.matmul(&spec.with_epilogue(true, Activation::None), &x, weight, Some(bias), &pre);
                device.elementwise(Elementwise::Gelu, Some(&pre), None, None, &out, rows * w);
                patch_pre.push(pre);
                patch_inputs.push(x);
            } else {
                device.matmul(&spec.with_epilogue(true, Activation::Gelu), &x, weight, Some(bias), &out);
            }
            x = out;
        }
        // Mean over the T patches of each image: a batched (1 × T)·(T × W) product with a row
        // of ones scaled by 1/T.
        let ones = device.upload(&vec![1.0; t]);
        let pooled = device.zeros(batch * w);
        device.matmul(&self.pool_spec(batch), &ones, &x, None, &pooled);
        // hidden = GELU(flatten(X)·Hᵀ + h + pooled·Gᵀ).
        let hidden_pre = device.zeros(batch * h);
        device.matmul(
            &Matmul::new(batch, h, t * w, false, true).with_epilogue(true, Activation::None),
            &x,
            self.value("hidden.weight"),
            Some(self.value("hidden.bias")),
            &hidden_pre,
        );
        device.matmul(
            &Matmul { accumulate: true, ..Matmul::new(batch, h, w, false, true) },
            &pooled,
            self.value("pooled.weight"),
            None,
            &hidden_pre,
        );
        let features = device.zeros(batch * h);
        device.elementwise(Elementwise::Gelu, Some(&hidden_pre), None, None, &features, batch * h);
        let logits = device.zeros(batch * outputs);
        device.matmul(
            &Matmul::new(batch, outputs, h, false, true).with_epilogue(true, Activation::None),
            &features,
            self.value("head.weight"),
            Some(self.value("head.bias")),
            &logits,
        );
        let cache = keep.then(|| Cache { batch, patch_inputs, patch_pre, tokens: x, pooled, hidden_pre });
        Forward { logits, features, cache }
    }

    /// `pooled[b] = (1/T) · ones(1×T) · X[b]` for each image b.
    fn pool_spec(&self, batch: usize) -> Matmul {
        let (t, w) = (self.config.tokens(), self.config.width);
        Matmul {
            batch_outer: batch,
            a: Layout::row_major(t),
            b: Layout::row_major(w).batched(t * w, 0),
            c: Layout::row_major(w).batched(w, 0),
            alpha: 1.0 / t as f32,
            ..Matmul::new(1, w, t, false, false)
        }
    }

    /// Gradients of every trained parameter from `dlogits`, the loss gradient w.r.t. the logits.
    fn backward(&self, device: &D, cache: &Cache<D>, features: &D::Buffer, dlogits: &D::Buffer) {
        let config = &self.config;
        let batch = cache.batch;
        let (t, w, h, outputs) = (config.tokens(), config.width, config.hidden, config.outputs());
        let rows = batch * t;
        let ones = device.upload(&vec![1.0; rows]);
        // Writes dW = dyᵀ·x and db = Σ dy (overwriting) for a linear layer.
        let weight_gradients = |layer: &str, rows: usize, out: usize, inp: usize, x: &D::Buffer, dy: &D::Buffer| {
            if let Some(dw) = self.grad(&format!("{layer}.weight")) {
                device.matmul(&Matmul::new(out, inp, rows, true, false), dy, x, None, dw);
            }
            if let Some(db) = self.grad(&format!("{layer}.bias")) {
                device.matmul(&Matmul::new(1, out, rows, false, false), &ones, dy, None, db);
            }
        };
        // Output layer.
        weight_gradients("head", batch, outputs, h, features, dlogits);
        let dfeatures = device.zeros(batch * h);
        device.matmul(
            &Matmul::new(batch, h, outputs, false, false),
            dlogits,
            self.value("head.weight"),
            None,
            &dfeatures,
        );
        let dhidden = device.zeros(batch * h);
        device.elementwise(
            Elementwise::GeluBackward,
            Some(&cache.hidden_pre),
            Some(&dfeatures),
            None,
            &dhidden,
            batch * h,
        );
        // Hidden layer: both branches.
        weight_gradients("hidden", batch, h, t * w, &cache.tokens, &dhidden);
        if let Some(dg) = self.grad("pooled.weight") {
            device.matmul(&Matmul::new(h, w, batch, true, false), &dhidden, &cache.pooled, None, dg);
        }
        let dx = device.zeros(rows * w);
        device.matmul(&Matmul::new(batch, t * w, h, false, false), &dhidden, self.value("hidden.weight"), None, &dx);
        let dpooled = device.zeros(batch * w);
        device.matmul(&Matmul::new(batch, w, h, false, false), &dhidden, self.value("pooled.weight"), None, &dpooled);
        // The mean's backward: every patch of image b receives dpooled[b] / T.
        device.matmul(
            &Matmul {
                batch_outer: batch,
                a: Layout::row_major(1),
                b: Layout::row_major(w).batched(w, 0),
                c: Layout::row_major(w).batched(t * w, 0),
                alpha: 1.0 / t as f32,
                accumulate: true,
                ..Matmul::new(t, w, 1, false, false)
            },
            &ones,
            &dpooled,
            None,
            &dx,
        );
        // Patch layers, last to first.
        let mut dx = dx;
        for layer in (0..config.patch_depth).rev() {
            let inp = if layer == 0 { config.patch_len() } else { w };
            let dpre = device.zeros(rows * w);
            device.elementwise(
                Elementwise::GeluBackward,
                Some(&cache.patch_pre[layer]),
                Some(&dx),
                None,
                &dpre,
                rows * w,
            );
            let name = format!("patch.{layer}");
            weight_gradients(&name, rows, w, inp, &cache.patch_inputs[layer], &dpre);
            if layer > 0 {
                let below = device.zeros(rows * inp);
                device.matmul(
                    &Matmul::new(rows, inp, w, false, false),
                    &dpre,
                    self.value(&format!("{name}.weight")),
                    None,
                    &below,
                );
                dx = below;
            }
        }
    }

    /// Logits and features of images `[B, C, S, S]`.
    pub fn forward(&self, device: &D, images: &[f32]) -> Result<ClassifierOutput, GpuError> {
        let batch = self.check_images(images)?;
        let input = device.upload(images);
        let forward = self.forward_internal(device, &input, batch, false);
        Ok(ClassifierOutput {
            logits: device.download(&forward.logits, batch * self.config.outputs())?,
            features: device.download(&forward.features, batch * self.config.hidden)?,
        })
    }

    /// Makes every parameter trainable (allocating gradients and AdamW moments) and restarts
    /// the step count.
    pub fn set_trainable(&mut self, device: &D) {
        self.parameters.set_trainable(device, |_| true);
    }

    /// The loss (see [`head_loss`]) of `images` against `targets` (`[B, outputs]`), leaving the
    /// gradients in the trained parameters' buffers (call [`Classifier::set_trainable`] first).
    pub fn loss_and_gradients(&self, device: &D, images: &[f32], targets: &[f32]) -> Result<f32, GpuError> {
        let batch = self.check_images(images)?;
        let outputs = self.config.outputs();
        if targets.len() != batch * outputs {
            return Err(GpuError::Shape(format!(
                "{batch} images need [{batch}, {outputs}] targets; got {} values",
                targets.len()
            )));
        }
        let input = device.upload(images);
        let forward = self.forward_internal(device, &input, batch, true);
        let logits: Vec<f64> = device.download(&forward.logits, batch * outputs)?.into_iter().map(f64::from).collect();
        let targets: Vec<f64> = targets.iter().copied().map(f64::from).collect();
        let mut gradient = vec![0.0; logits.len()];
        let loss = head_loss(&self.config.heads, &logits, &targets, &mut gradient);
        let gradient: Vec<f32> = gradient.into_iter().map(|g| g as f32).collect();
        let dlogits = device.upload(&gradient);
        let cache = forward.cache.expect("the cache is kept when training");
        self.backward(device, &cache, &forward.features, &dlogits);
        Ok(loss as f32)
    }

    /// One training step: [`Classifier::loss_and_gradients`], global-norm clipping and AdamW on
    /// every parameter. Returns the loss before the update.
    pub fn train_step(&mut self, device: &D, images: &[f32], targets: &[f32], hyper: &AdamW) -> Result<f32, GpuError> {
        if !self.parameters.all_trained() {
            self.set_trainable(device);
        }
        let loss = self.loss_and_gradients(device, images, targets)?;
        self.parameters.adamw_step(device, hyper);
        // The loss was read back before the update; bound the work in flight.
        device.synchronize()?;
        Ok(loss)
    }

    /// Training steps taken since [`Classifier::set_trainable`].
    pub fn steps(&self) -> u32 {
        self.parameters.steps()
    }

    /// The gradient of a trained parameter (after a training step), `None` if it is not trained;
    /// a name the classifier does not have is [`GpuError::UnknownParameter`].
    pub fn gradient(&self, device: &D, name: &str) -> Result<Option<Vec<f32>>, GpuError> {
        self.parameters.gradient(device, name)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use super::*;
    use crate::GpuContext;
    use crate::device::{CpuDevice, WgpuDevice};
    use crate::rng::SplitMix64;

    /// The wgpu context of these tests. Fails (never skips) without an adapter.
    fn context() -> Arc<GpuContext> {
        static CONTEXT: OnceLock<Arc<GpuContext>> = OnceLock::new();
        CONTEXT
            .get_or_init(|| match GpuContext::new() {
                Ok(context) => Arc::new(context),
                Err(error) => panic!(
                    "these tests need a wgpu adapter and found none: {error}\n\
                     install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers"
                ),
            })
            .clone()
    }

    /// Test inputs from the workspace's SplitMix64.
    struct Rng(SplitMix64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(SplitMix64::new(seed))
        }
        fn next_u64(&mut self) -> u64 {
            self.0.next_u64()
        }
        /// Uniform in [-1, 1).
        fn uniform(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        fn vec(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.uniform()).collect()
        }
        fn below(&mut self, bound: usize) -> usize {
            (self.next_u64() % bound as u64) as usize
        }
    }

    /// Every kind of head; 8×8 images, patch 2 (16 patches), two patch layers.
    fn tiny() -> ClassifierConfig {
        ClassifierConfig {
            image_size: 8,
            channels: 3,
            patch: 2,
            width: 5,
            patch_depth: 2,
            hidden: 7,
            heads: vec![
                Head::new("class", Loss::SoftmaxCrossEntropy, 3),
                Head::new("flags", Loss::BinaryCrossEntropy, 2).weighted(0.5),
                Head::new("score", Loss::SquaredError, 1).weighted(2.0),
            ],
        }
    }

    /// Random weights with non-zero biases everywhere (no parameter is trivially zero).
    fn randomized(config: &ClassifierConfig, seed: u64, scale: f32) -> HostWeights {
        let mut rng = Rng::new(seed);
        let mut weights = config.init_weights(seed);
        for (_, values) in weights.tensors.values_mut() {
            values.iter_mut().for_each(|v| *v = scale * rng.uniform());
        }
        weights
    }

    /// Targets of every kind: a one-hot class, 0/1 flags, a score.
    fn targets(config: &ClassifierConfig, batch: usize, rng: &mut Rng) -> Vec<f32> {
        let mut out = Vec::new();
        for _ in 0..batch {
            for head in &config.heads {
                match head.loss {
                    Loss::SoftmaxCrossEntropy => {
                        let class = rng.below(head.outputs);
                        out.extend((0..head.outputs).map(|i| (i == class) as u8 as f32));
                    }
                    Loss::BinaryCrossEntropy => out.extend((0..head.outputs).map(|_| rng.below(2) as f32)),
                    Loss::SquaredError => out.extend((0..head.outputs).map(|_| rng.uniform())),
                }
            }
        }
        out
    }

    fn assert_close(actual: &[f32], expected: &[f32], rel: f32, what: &str) {
        assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
        let mean = expected.iter().map(|v| v.abs()).sum::<f32>() / expected.len().max(1) as f32;
        for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
            let bound = rel * (e.abs() + mean) + f32::MIN_POSITIVE;
            assert!(
                a.is_finite() && (a - e).abs() <= bound,
                "{what}: element {index}: got {a}, expected {e} (bound {bound})"
            );
        }
    }

    #[test]
    fn head_loss_gradient_matches_finite_differences() {
        let config = tiny();
        let mut rng = Rng::new(1);
        let batch = 3;
        let logits: Vec<f64> = rng.vec(batch * config.outputs()).iter().map(|v| 3.0 * *v as f64).collect();
        // Soft targets too: a softmax target that is a distribution, fractional flags.
        let mut targets: Vec<f64> = targets(&config, batch, &mut rng).into_iter().map(f64::from).collect();
        targets[0..3].copy_from_slice(&[0.2, 0.5, 0.3]);
        targets[3] = 0.25;
        let mut analytic = vec![0.0; logits.len()];
        head_loss(&config.heads, &logits, &targets, &mut analytic);
        let mut probe = logits.clone();
        let mut scratch = vec![0.0; logits.len()];
        for i in 0..logits.len() {
            let h = 1e-6;
            probe[i] = logits[i] + h;
            let up = head_loss(&config.heads, &probe, &targets, &mut scratch);
            probe[i] = logits[i] - h;
            let down = head_loss(&config.heads, &probe, &targets, &mut scratch);
            probe[i] = logits[i];
            let numeric = (up - down) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() <= 1e-7 * (1.0 + analytic[i].abs()),
                "d loss / d logit {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn head_loss_is_stable_for_extreme_logits() {
        let heads = [Head::new("class", Loss::SoftmaxCrossEntropy, 2), Head::new("flag", Loss::BinaryCrossEntropy, 1)];
        let mut gradient = [0.0; 3];
        let loss = head_loss(&heads, &[800.0, -800.0, -900.0], &[0.0, 1.0, 1.0], &mut gradient);
        assert!((loss - 2500.0).abs() < 1e-9, "loss {loss}");
        assert_eq!(gradient, [1.0, -1.0, -1.0]);
        let probabilities = activate(&heads, &[800.0, -800.0, -900.0]);
        assert_eq!(probabilities, vec![1.0, 0.0, 0.0]);
    }

    /// The device backward against central differences of Σ w ⊙ logits, in f64 on the CPU
    /// reference: every parameter, three elements each.
    #[test]
    fn backward_matches_finite_differences_in_f64() {
        let config = tiny();
        let device = CpuDevice::<f64>::new();
        let mut model = Classifier::new(&device, config.clone(), &randomized(&config, 2, 0.6)).expect("weights fit");
        model.set_trainable(&device);
        let mut rng = Rng::new(3);
        let batch = 2;
        let images = device.upload(&rng.vec(batch * config.image_len()));
        let w = rng.vec(batch * config.outputs());
        let dlogits = device.upload(&w);
        let loss_of = |model: &Classifier<CpuDevice<f64>>| {
            let forward = model.forward_internal(&device, &images, batch, false);
            let logits = forward.logits.read().unwrap().clone();
            logits.iter().zip(&w).map(|(y, w)| y * *w as f64).sum::<f64>()
        };
        let forward = model.forward_internal(&device, &images, batch, true);
        model.backward(&device, forward.cache.as_ref().unwrap(), &forward.features, &dlogits);
        for parameter in &model.parameters {
            let analytic = parameter.training.as_ref().unwrap()[0].read().unwrap().clone();
            assert!(analytic.iter().any(|g| *g != 0.0), "{} has a gradient", parameter.name);
            for _ in 0..3 {
                let element = rng.below(parameter.len());
                let original = parameter.value.read().unwrap()[element];
                let h = 1e-6;
                parameter.value.write().unwrap()[element] = original + h;
                let up = loss_of(&model);
                parameter.value.write().unwrap()[element] = original - h;
                let down = loss_of(&model);
                parameter.value.write().unwrap()[element] = original;
                let numeric = (up - down) / (2.0 * h);
                assert!(
                    (numeric - analytic[element]).abs() <= 1e-7 + 1e-6 * analytic[element].abs(),
                    "{}[{element}]: numeric {numeric} vs analytic {}",
                    parameter.name,
                    analytic[element]
                );
            }
        }
    }

    #[test]
    fn wgpu_matches_cpu_in_forward_gradients_and_update() {
        let config = tiny();
        let weights = randomized(&config, 4, 0.5);
        let mut rng = Rng::new(5);
        // 5 images: not a multiple of anything a kernel tiles by.
        let batch = 5;
        let images = rng.vec(batch * config.image_len());
        let targets = targets(&config, batch, &mut rng);
        let cpu = CpuDevice::<f32>::new();
        let gpu = WgpuDevice::new(context());
        let mut on_cpu = Classifier::new(&cpu, config.clone(), &weights).unwrap();
        let mut on_gpu = Classifier::new(&gpu, config.clone(), &weights).unwrap();
        let expected = on_cpu.forward(&cpu, &images).unwrap();
        let actual = on_gpu.forward(&gpu, &images).unwrap();
        assert_close(&actual.logits, &expected.logits, 1e-4, "logits");
        assert_close(&actual.features, &expected.features, 1e-4, "features");

        let hyper = AdamW { lr: 1e-2, weight_decay: 0.01, ..AdamW::default() };
        let loss_cpu = on_cpu.train_step(&cpu, &images, &targets, &hyper).unwrap();
        let loss_gpu = on_gpu.train_step(&gpu, &images, &targets, &hyper).unwrap();
        assert_close(&[loss_gpu], &[loss_cpu], 1e-5, "loss");
        let after_cpu = on_cpu.weights(&cpu).unwrap();
        let after_gpu = on_gpu.weights(&gpu).unwrap();
        for parameter in &on_cpu.parameters {
            let name = &parameter.name;
            let g_cpu = on_cpu.gradient(&cpu, name).unwrap().unwrap();
            let g_gpu = on_gpu.gradient(&gpu, name).unwrap().unwrap();
            assert_close(&g_gpu, &g_cpu, 1e-3, &format!("gradient of {name}"));
            let largest = g_cpu.iter().fold(0.0f32, |m, g| m.max(g.abs()));
            let (got, want) = (&after_gpu.tensors[name].1, &after_cpu.tensors[name].1);
            for ((g, c), gradient) in got.iter().zip(want).zip(&g_cpu) {
                // Adam's first step moves a value by ≈ lr·sign(g): where the gradient is
                // rounding noise its sign is arbitrary.
                let bound =
                    if gradient.abs() <= 1e-4 * largest { 2.0 * hyper.lr + 1e-6 } else { 1e-5 + 1e-4 * c.abs() };
                assert!((g - c).abs() <= bound, "updated {name}: {g} vs {c}");
            }
        }
    }

    /// A separable toy problem: the class is the bright quadrant, one flag says whether the red
    /// channel is raised, the other is always off, and the score is the mean green level.
    fn toy_batch(config: &ClassifierConfig, batch: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
        let (s, area) = (config.image_size, config.image_size * config.image_size);
        let (mut images, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let class = rng.below(3);
            let red = rng.below(2) == 1;
            let green = rng.uniform();
            let mut image: Vec<f32> = (0..config.image_len()).map(|_| 0.1 * rng.uniform()).collect();
            for y in 0..s {
                for x in 0..s {
                    let quadrant = (y >= s / 2) as usize * 2 + (x >= s / 2) as usize;
                    if quadrant == class {
                        (0..3).for_each(|c| image[c * area + y * s + x] += 0.8);
                    }
                    if red {
                        image[y * s + x] += 0.5;
                    }
                    image[area + y * s + x] += 0.5 * green;
                }
            }
            images.extend(image);
            targets.extend((0..3).map(|i| (i == class) as u8 as f32));
            targets.extend([red as u8 as f32, 0.0, green]);
        }
        (images, targets)
    }

    #[test]
    fn a_few_hundred_steps_fit_a_separable_toy_problem() {
        let config = ClassifierConfig { width: 8, patch_depth: 1, hidden: 16, ..tiny() };
        let device = CpuDevice::<f32>::new();
        let mut model = Classifier::new(&device, config.clone(), &config.init_weights(6)).unwrap();
        let hyper = AdamW { lr: 3e-3, ..AdamW::default() };
        let mut rng = Rng::new(7);
        let mut first = None;
        for _ in 0..300 {
            let (images, targets) = toy_batch(&config, 32, &mut rng);
            let loss = model.train_step(&device, &images, &targets, &hyper).unwrap();
            first.get_or_insert(loss);
        }
        assert_eq!(model.steps(), 300);
        let (images, targets) = toy_batch(&config, 200, &mut rng);
        let output = model.forward(&device, &images).unwrap();
        let predictions = activate(&config.heads, &output.logits);
        let outputs = config.outputs();
        let mut squared_error = 0.0;
        for (prediction, target) in predictions.chunks(outputs).zip(targets.chunks(outputs)) {
            let argmax = |v: &[f32]| (0..3).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap();
            assert_eq!(argmax(prediction), argmax(target), "class");
            assert_eq!(prediction[3] > 0.5, target[3] > 0.5, "red flag");
            assert!(prediction[4] < 0.5, "the always-off flag");
            squared_error += (prediction[5] - target[5]).powi(2);
        }
        let rmse = (squared_error / 200.0).sqrt();
        assert!(rmse < 0.1, "score RMSE {rmse} (scores spread over [-1, 1])");
        let mut gradient = vec![0.0; predictions.len()];
        let logits: Vec<f64> = output.logits.iter().map(|v| *v as f64).collect();
        let targets: Vec<f64> = targets.iter().map(|v| *v as f64).collect();
        let loss = head_loss(&config.heads, &logits, &targets, &mut gradient) as f32;
        assert!(loss < 0.1 * first.unwrap(), "held-out loss {loss} vs first {first:?}");
    }

    #[test]
    fn weights_round_trip_through_safetensors_with_their_configuration() {
        let config = tiny();
        let device = CpuDevice::<f32>::new();
        let model = Classifier::new(&device, config.clone(), &randomized(&config, 8, 0.4)).unwrap();
        let bytes = model.to_safetensors(&device, &[("note", "hello".to_string())]).unwrap();
        let loaded = Classifier::from_safetensors(&device, &bytes).unwrap();
        assert_eq!(loaded.config, config);
        assert_eq!(loaded.weights(&device).unwrap(), model.weights(&device).unwrap());
        let images = Rng::new(9).vec(2 * config.image_len());
        assert_eq!(loaded.forward(&device, &images).unwrap(), model.forward(&device, &images).unwrap());
        // A DiT's weights (no configuration) and a wrong shape are refused with a reason.
        let plain = model.weights(&device).unwrap().to_safetensors(None).unwrap();
        let error = Classifier::from_safetensors(&device, &plain).err().unwrap();
        assert!(error.to_string().contains("not a classifier"), "{error}");
        let mut wrong = model.weights(&device).unwrap();
        wrong.tensors.get_mut("pooled.weight").unwrap().0 = vec![1, 35];
        let error = Classifier::new(&device, config.clone(), &wrong).err().unwrap();
        assert!(error.to_string().contains("pooled.weight"), "{error}");
        assert!(matches!(model.forward(&device, &[0.0; 10]), Err(GpuError::Shape(_))));
    }

    #[test]
    fn an_unknown_parameter_name_is_refused_with_an_error() {
        let config = tiny();
        let device = CpuDevice::<f32>::new();
        let mut model = Classifier::new(&device, config.clone(), &config.init_weights(1)).unwrap();
        model.set_trainable(&device);
        let error = model.gradient(&device, "patch.9.weight").unwrap_err();
        assert!(matches!(&error, GpuError::UnknownParameter(name) if name == "patch.9.weight"), "{error}");
        assert_eq!(model.gradient(&device, "head.bias").unwrap(), Some(vec![0.0; config.outputs()]));
    }

    #[test]
    fn bad_configurations_are_refused() {
        for (change, expected) in [
            (ClassifierConfig { patch: 3, ..tiny() }, "must divide"),
            (ClassifierConfig { patch_depth: 0, ..tiny() }, "patch_depth"),
            (ClassifierConfig { heads: vec![], ..tiny() }, "head"),
        ] {
            let error = ClassifierConfig::from_json(&change.to_json()).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        assert_eq!(ClassifierConfig::from_json(&tiny().to_json()).unwrap(), tiny());
    }
}
