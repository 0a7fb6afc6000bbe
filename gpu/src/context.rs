//! Device selection, the wgpu context (device, queue, cached pipelines and layouts), and command
//! recording.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

/// Errors from choosing or using a compute device.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No wgpu adapter was found (or none matched `WGPU_ADAPTER_NAME`).
    #[error(
        "no wgpu adapter found ({0}); on Debian/Ubuntu install Mesa's software Vulkan driver with \
         `apt-get install mesa-vulkan-drivers`, or set THITL_DEVICE=cpu"
    )]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("the adapter refused to create a device: {0}")]
    RequestDevice(String),
    /// `THITL_DEVICE` holds something other than `auto`, `wgpu` or `cpu`.
    #[error("THITL_DEVICE must be auto, wgpu or cpu, not {0:?}")]
    BadDeviceChoice(String),
    /// Waiting for the device failed (device lost, timeout).
    #[error("waiting for the GPU failed: {0}")]
    Poll(String),
    /// Reading a buffer back failed.
    #[error("mapping a buffer for reading failed: {0}")]
    Map(String),
    /// A shape did not fit the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// The caller asked to stop (see [`crate::model::Dit::sample_with_progress`]).
    #[error("cancelled")]
    Cancelled,
    /// A parameter name the model does not have (see [`crate::optim::ParameterSet`]).
    #[error("no parameter named {0:?}")]
    UnknownParameter(String),
}

/// How every kernel declares its parameter block (binding 0 of group 0).
const UNIFORM_DECLARATION: &str = "@group(0) @binding(0) var<uniform> p: Params;";

/// Bytes of immediates (push constants) a kernel may use; every parameter block fits.
const IMMEDIATE_BYTES: u32 = 128;

/// Options of [`GpuContext::with_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextOptions {
    /// Pass kernel parameters as immediates (push constants) where the adapter has them, instead
    /// of a uniform buffer per dispatch (`THITL_IMMEDIATES=0` turns this off).
    pub immediates: bool,
}

/// Which compute device the caller wants (`THITL_DEVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU adapter when there is one, else the CPU backend (software adapters such as
    /// lavapipe are skipped: the CPU backend is faster than a GPU emulated on the CPU).
    Auto,
    /// wgpu on whatever adapter is found, software ones included.
    Wgpu,
    /// The plain-Rust CPU backend.
    Cpu,
}

impl DeviceChoice {
    /// Reads `THITL_DEVICE` (`auto` when unset).
    pub fn from_env() -> Result<Self, GpuError> {
        match std::env::var("THITL_DEVICE") {
            Ok(value) => value.parse(),
            Err(_) => Ok(DeviceChoice::Auto),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = GpuError;
    fn from_str(text: &str) -> Result<Self, GpuError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            other => Err(GpuError::BadDeviceChoice(other.to_string())),
        }
    }
}

/// The backend a computation runs on.
#[derive(Clone)]
pub enum Backend {
    /// The plain-Rust reference backend.
    Cpu,
    /// wgpu compute kernels.
    Wgpu(Arc<GpuContext>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend {
    /// Chooses a backend as `THITL_DEVICE` says (see [`DeviceChoice`]).
    pub fn from_env() -> Result<Self, GpuError> {
        Self::choose(DeviceChoice::from_env()?)
    }

    /// Chooses a backend for an explicit choice.
    pub fn choose(choice: DeviceChoice) -> Result<Self, GpuError> {
        match choice {
            DeviceChoice::Cpu => Ok(Backend::Cpu),
            DeviceChoice::Wgpu => Ok(Backend::Wgpu(Arc::new(GpuContext::new()?))),
            DeviceChoice::Auto => match GpuContext::new() {
                Ok(context) if context.is_hardware() => Ok(Backend::Wgpu(Arc::new(context))),
                _ => Ok(Backend::Cpu),
            },
        }
    }

    /// A one-line description: `cpu (AVX-512, N threads)` or `cpu (AVX2 + FMA, N threads)`
    /// (the gemm's kernel; `cpu (matrixmultiply, N threads)` on processors without either) or
    /// `wgpu: ADAPTER (BACKEND, TYPE, DRIVER)`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => {
                let kernel = crate::gemm::Kernel::best().map_or("matrixmultiply", crate::gemm::Kernel::name);
                format!("cpu ({kernel}, {} threads)", crate::cpu::parallelism())
            }
            Backend::Wgpu(context) => format!("wgpu: {}", context.describe()),
        }
    }
}

/// How a kernel binds a storage buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// One wgpu device and queue with every pipeline and bind-group layout built once.
///
/// Kernel convention: binding 0 of group 0 is a uniform block of parameters; bindings 1.. are
/// storage buffers whose access the launcher declares.
pub struct GpuContext {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter says about itself.
    pub info: wgpu::AdapterInfo,
    /// The limits requested (the adapter's own).
    pub limits: wgpu::Limits,
    features: wgpu::Features,
    pipeline_cache: Option<wgpu::PipelineCache>,
    layouts: Mutex<HashMap<Vec<Access>, Arc<KernelLayout>>>,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    shader_checks: bool,
    immediates: bool,
    unused_read: wgpu::Buffer,
    unused_write: wgpu::Buffer,
}

/// A bind-group layout and the pipeline layout made of it (one per binding signature).
struct KernelLayout {
    bind_group: wgpu::BindGroupLayout,
    pipeline: wgpu::PipelineLayout,
}

/// A compute pipeline with its layout.
pub struct Pipeline {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    layout: Arc<KernelLayout>,
    accesses: Vec<Access>,
}

impl GpuContext {
    /// Opens an adapter (obeying `WGPU_ADAPTER_NAME` and `WGPU_BACKEND`, `WGPU_POWER_PREF`) and a
    /// device with the adapter's own limits.
    pub fn new() -> Result<Self, GpuError> {
        let immediates = std::env::var("THITL_IMMEDIATES").map_or(true, |value| value != "0");
        Self::with_options(ContextOptions { immediates })
    }

    /// [`GpuContext::new`] with explicit options.
    pub fn with_options(options: ContextOptions) -> Result<Self, GpuError> {
        pollster::block_on(Self::new_async(options))
    }

    async fn new_async(options: ContextOptions) -> Result<Self, GpuError> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if std::env::var_os("WGPU_BACKEND").is_none() {
            // The primary backends (Vulkan, Metal, DX12) unless WGPU_BACKEND asks for others: the
            // kernels need their compute, and the GL backend's display probe prints
            // "XDG_RUNTIME_DIR is invalid" errors on machines without a desktop session.
            descriptor.backends = wgpu::Backends::PRIMARY;
        }
        let backends = descriptor.backends;
        let instance = wgpu::Instance::new(descriptor);
        if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
            // wgpu's helper panics when no adapter matches; say it as an error instead.
            let wanted = wanted.to_lowercase();
            let adapters = instance.enumerate_adapters(backends).await;
            if !adapters.iter().any(|adapter| adapter.get_info().name.to_lowercase().contains(&wanted)) {
                let names: Vec<String> = adapters.iter().map(|adapter| adapter.get_info().name).collect();
                return Err(GpuError::NoAdapter(format!("WGPU_ADAPTER_NAME={wanted:?} matches none of {names:?}")));
            }
        }
        let adapter = wgpu::util::initialize_adapter_from_env_or_default(&instance, None)
            .await
            .map_err(|error| GpuError::NoAdapter(error.to_string()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let mut wanted_features = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::PIPELINE_CACHE;
        if options.immediates && limits.max_immediate_size >= IMMEDIATE_BYTES {
            wanted_features |= wgpu::Features::IMMEDIATES;
        }
        let features = adapter.features() & wanted_features;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("thitl"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|error| GpuError::RequestDevice(error.to_string()))?;
        let pipeline_cache = if features.contains(wgpu::Features::PIPELINE_CACHE) {
            let data = pipeline_cache_path(&info).and_then(|path| std::fs::read(path).ok());
            // SAFETY: the data comes from `PipelineCache::get_data` of an adapter with the same
            // `pipeline_cache_key` (the file name), and `fallback` lets the driver reject it.
            Some(unsafe {
                device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("thitl pipeline cache"),
                    data: data.as_deref(),
                    fallback: true,
                })
            })
        } else {
            None
        };
        let shader_checks = std::env::var("THITL_SHADER_CHECKS").is_ok_and(|value| value == "1");
        let unused = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (unused_read, unused_write) = (unused("unused read"), unused("unused write"));
        Ok(GpuContext {
            unused_read,
            unused_write,
            device,
            queue,
            info,
            limits,
            features,
            pipeline_cache,
            layouts: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            shader_checks,
            immediates: features.contains(wgpu::Features::IMMEDIATES),
        })
    }

    /// A small buffer to bind where a kernel entry ignores a read-only binding.
    pub fn unused_read(&self) -> &wgpu::Buffer {
        &self.unused_read
    }

    /// A small buffer to bind where a kernel entry ignores a read-write binding.
    pub fn unused_write(&self) -> &wgpu::Buffer {
        &self.unused_write
    }

    /// True for a real GPU (integrated, discrete or virtual), false for a CPU emulation such as
    /// lavapipe.
    pub fn is_hardware(&self) -> bool {
        !matches!(self.info.device_type, wgpu::DeviceType::Cpu)
    }

    /// True when kernel parameters travel as immediates rather than uniform buffers.
    pub fn uses_immediates(&self) -> bool {
        self.immediates
    }

    /// True where GPU-side timestamps can be taken around compute passes.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// `NAME (BACKEND, DEVICE TYPE, DRIVER DRIVER-INFO)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, {} {}){}",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info,
            if self.immediates { " [parameters as immediates]" } else { "" }
        )
    }

    /// Writes the driver's pipeline cache to `$THITL_PIPELINE_CACHE_DIR` (if that is set and the
    /// adapter has a pipeline cache), so the next process compiles the kernels faster.
    pub fn save_pipeline_cache(&self) -> std::io::Result<()> {
        if let (Some(cache), Some(path)) = (&self.pipeline_cache, pipeline_cache_path(&self.info))
            && let Some(data) = cache.get_data()
        {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, data)?;
            std::fs::rename(temporary, path)?;
        }
        Ok(())
    }

    fn layout(&self, accesses: &[Access]) -> Arc<KernelLayout> {
        let mut layouts = self.layouts.lock().expect("layout cache poisoned");
        layouts
            .entry(accesses.to_vec())
            .or_insert_with(|| {
                let mut entries = Vec::new();
                if !self.immediates {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                for (index, access) in accesses.iter().enumerate() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: index as u32 + 1,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: *access == Access::Read },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                let bind_group_layout = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
                let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&bind_group_layout)],
                    immediate_size: if self.immediates { IMMEDIATE_BYTES } else { 0 },
                });
                Arc::new(KernelLayout { bind_group: bind_group_layout, pipeline: pipeline_layout })
            })
            .clone()
    }

    /// The pipeline for `key`, compiled from `source()` (entry point `entry`) the first time.
    pub fn pipeline(
        &self,
        key: &str,
        entry: &str,
        accesses: &[Access],
        source: impl FnOnce() -> String,
    ) -> Arc<Pipeline> {
        if let Some(pipeline) = self.pipelines.lock().expect("pipeline cache poisoned").get(key) {
            return pipeline.clone();
        }
        let layouts = self.layout(accesses);
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(key),
            source: wgpu::ShaderSource::Wgsl(Cow::Owned(if self.immediates {
                // Every kernel declares its parameters the same way; as immediates they need no
                // buffer and no bind-group entry per dispatch.
                source().replace(UNIFORM_DECLARATION, "var<immediate> p: Params;")
            } else {
                source()
            })),
        };
        let module = if self.shader_checks {
            self.device.create_shader_module(descriptor)
        } else {
            // SAFETY: every kernel in this crate checks its own indices against the sizes it is
            // given (the tests run them on shapes that are not multiples of their tiles), so the
            // runtime checks naga would add are redundant; THITL_SHADER_CHECKS=1 turns them on.
            unsafe { self.device.create_shader_module_trusted(descriptor, wgpu::ShaderRuntimeChecks::unchecked()) }
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key),
            layout: Some(&layouts.pipeline),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                // Every kernel writes workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: self.pipeline_cache.as_ref(),
        });
        let pipeline = Arc::new(Pipeline { pipeline, layout: layouts, accesses: accesses.to_vec() });
        self.pipelines.lock().expect("pipeline cache poisoned").insert(key.to_string(), pipeline.clone());
        pipeline
    }

    /// Starts recording a batch of dispatches.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            context: self,
            encoder: self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }),
            timestamps: None,
        }
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|error| GpuError::Poll(error.to_string()))
    }

    /// A storage buffer of `len` f32 (at least 4 bytes), uninitialised contents are zero.
    pub fn storage_buffer(&self, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data` (u32 or f32 words).
    pub fn storage_buffer_with<T: bytemuck::Pod>(&self, data: &[T]) -> wgpu::Buffer {
        if data.is_empty() {
            return self.storage_buffer(1);
        }
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Copies `len` words from the start of `buffer` back to the host.
    pub fn read_words<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<T>, GpuError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        self.wait()?;
        receiver
            .recv()
            .map_err(|error| GpuError::Map(error.to_string()))?
            .map_err(|error| GpuError::Map(error.to_string()))?;
        let view = staging.get_mapped_range(..).map_err(|error| GpuError::Map(error.to_string()))?;
        let words = bytemuck::cast_slice::<u8, T>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(words)
    }
}

fn pipeline_cache_path(info: &wgpu::AdapterInfo) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("THITL_PIPELINE_CACHE_DIR")?;
    let key = wgpu::util::pipeline_cache_key(info)?;
    Some(std::path::Path::new(&dir).join(key))
}

/// Records dispatches into one command encoder; [`Recorder::submit`] sends them.
pub struct Recorder<'a> {
    context: &'a GpuContext,
    encoder: wgpu::CommandEncoder,
    timestamps: Option<(&'a wgpu::QuerySet, u32)>,
}

impl<'a> Recorder<'a> {
    /// Continues recording into an existing encoder of `context`.
    pub fn from_encoder(context: &'a GpuContext, encoder: wgpu::CommandEncoder) -> Self {
        Recorder { context, encoder, timestamps: None }
    }

    /// Gives the encoder back without submitting it.
    pub fn into_encoder(self) -> wgpu::CommandEncoder {
        self.encoder
    }

    /// The context this recorder belongs to.
    pub fn context(&self) -> &'a GpuContext {
        self.context
    }

    /// Makes the next dispatch write GPU timestamps at `index` (start) and `index + 1` (end).
    pub fn time_next_dispatch(&mut self, query_set: &'a wgpu::QuerySet, index: u32) {
        self.timestamps = Some((query_set, index));
    }

    /// Records one dispatch of `pipeline` with `params` (a uniform block) and `buffers` (in the
    /// order of the pipeline's declared accesses).
    pub fn dispatch(&mut self, pipeline: &Pipeline, params: &[u32], buffers: &[&wgpu::Buffer], workgroups: [u32; 3]) {
        assert_eq!(buffers.len(), pipeline.accesses.len(), "kernel expects {} buffers", pipeline.accesses.len());
        if workgroups.contains(&0) {
            return;
        }
        let mut words = params.to_vec();
        // Uniform blocks are read as vec4s.
        while words.is_empty() || !words.len().is_multiple_of(4) {
            words.push(0);
        }
        let immediates = self.context.immediates;
        let uniform = (!immediates).then(|| {
            self.context.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            })
        });
        let mut entries = Vec::new();
        if let Some(uniform) = &uniform {
            entries.push(wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() });
        }
        for (index, buffer) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: index as u32 + 1, resource: buffer.as_entire_binding() });
        }
        let bind_group = self.context.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.layout.bind_group,
            entries: &entries,
        });
        let timestamp_writes = self.timestamps.take().map(|(query_set, index)| wgpu::ComputePassTimestampWrites {
            query_set,
            beginning_of_pass_write_index: Some(index),
            end_of_pass_write_index: Some(index + 1),
        });
        let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
        pass.set_pipeline(&pipeline.pipeline);
        if immediates {
            assert!(words.len() * 4 <= IMMEDIATE_BYTES as usize, "parameters exceed immediates");
            pass.set_immediates(0, bytemuck::cast_slice(&words));
        }
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
    }

    /// Records a buffer-to-buffer copy.
    pub fn copy(&mut self, from: &wgpu::Buffer, to: &wgpu::Buffer, words: usize) {
        if words > 0 {
            self.encoder.copy_buffer_to_buffer(from, 0, to, 0, (words * 4) as u64);
        }
    }

    /// Records zeroing the first `words` values of `buffer`.
    pub fn clear(&mut self, buffer: &wgpu::Buffer, words: usize) {
        if words > 0 {
            self.encoder.clear_buffer(buffer, 0, Some((words * 4) as u64));
        }
    }

    /// Records resolving `count` timestamps of `query_set` into `destination`.
    pub fn resolve_timestamps(&mut self, query_set: &wgpu::QuerySet, count: u32, destination: &wgpu::Buffer) {
        self.encoder.resolve_query_set(query_set, 0..count, destination, 0);
    }

    /// Submits everything recorded.
    pub fn submit(self) {
        self.context.queue.submit([self.encoder.finish()]);
    }
}

/// Splits a 1-D workgroup count over x and y so neither exceeds the device limit.
pub fn grid_1d(context: &GpuContext, workgroups: usize) -> [u32; 3] {
    let max = context.limits.max_compute_workgroups_per_dimension.max(1) as usize;
    if workgroups <= max {
        [workgroups as u32, 1, 1]
    } else {
        let y = workgroups.div_ceil(max);
        [max as u32, y as u32, 1]
    }
}
