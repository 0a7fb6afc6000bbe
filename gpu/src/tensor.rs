//! A small f32 tensor type over a wgpu storage buffer.

use crate::context::{GpuContext, GpuError};

/// A dense row-major f32 tensor living in a storage buffer.
pub struct Tensor {
    /// The storage buffer (at least `len()` f32, possibly more).
    pub buffer: wgpu::Buffer,
    shape: Vec<usize>,
}

impl Tensor {
    /// Uploads `data` with `shape` (whose product must equal `data.len()`).
    pub fn from_slice(context: &GpuContext, data: &[f32], shape: &[usize]) -> Result<Self, GpuError> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(GpuError::Shape(format!("shape {shape:?} holds {len} values, data has {}", data.len())));
        }
        Ok(Tensor { buffer: context.storage_buffer_with(data), shape: shape.to_vec() })
    }

    /// A tensor of zeros.
    pub fn zeros(context: &GpuContext, shape: &[usize]) -> Self {
        let len: usize = shape.iter().product();
        Tensor { buffer: context.storage_buffer(len), shape: shape.to_vec() }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the values back to the host (waits for all submitted work).
    pub fn to_vec(&self, context: &GpuContext) -> Result<Vec<f32>, GpuError> {
        context.read_words(&self.buffer, self.len())
    }

    /// Overwrites the values from the host.
    pub fn write(&self, context: &GpuContext, data: &[f32]) -> Result<(), GpuError> {
        if data.len() != self.len() {
            return Err(GpuError::Shape(format!(
                "writing {} values into a tensor of shape {:?}",
                data.len(),
                self.shape
            )));
        }
        if !data.is_empty() {
            context.queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Same buffer, another shape with the same number of values.
    pub fn reshape(self, shape: &[usize]) -> Result<Self, GpuError> {
        let len: usize = shape.iter().product();
        if len != self.len() {
            return Err(GpuError::Shape(format!("cannot reshape {:?} into {shape:?}", self.shape)));
        }
        Ok(Tensor { buffer: self.buffer, shape: shape.to_vec() })
    }
}

/// Serialises named f32 tensors (name, shape, values) to safetensors bytes (little-endian), with
/// optional header metadata; the message of an error names the tensor.
pub fn f32_safetensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, String> {
    let bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), data)
                .map(|view| (name.to_string(), view))
                .map_err(|error| format!("{name}: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, metadata).map_err(|error| error.to_string())
}
