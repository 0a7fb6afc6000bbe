//! Device selection and the tensor type.

mod common;

use gpu::context::{Backend, DeviceChoice, GpuError};
use gpu::{GpuContext, Tensor};

#[test]
fn device_choice_parses_and_auto_skips_software_adapters() {
    assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
    assert_eq!("WGPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Wgpu);
    assert_eq!(" cpu ".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
    assert!(matches!("cuda".parse::<DeviceChoice>(), Err(GpuError::BadDeviceChoice(value)) if value == "cuda"));

    let context = common::context();
    assert!(matches!(Backend::choose(DeviceChoice::Cpu).unwrap(), Backend::Cpu));
    assert!(matches!(Backend::choose(DeviceChoice::Wgpu).unwrap(), Backend::Wgpu(_)));
    let auto = Backend::choose(DeviceChoice::Auto).unwrap();
    // On lavapipe `auto` means the CPU backend; on a real GPU it means wgpu.
    assert_eq!(matches!(auto, Backend::Wgpu(_)), context.is_hardware(), "{}", auto.describe());
    assert!(context.limits.max_storage_buffer_binding_size > 0);
}

#[test]
fn tensors_round_trip_and_check_shapes() {
    let context = common::context();
    let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    let tensor = Tensor::from_slice(&context, &data, &[3, 4]).unwrap();
    assert_eq!(tensor.shape(), &[3, 4]);
    assert_eq!(tensor.to_vec(&context).unwrap(), data);
    assert!(Tensor::from_slice(&context, &data, &[5, 4]).is_err());
    let reshaped = tensor.reshape(&[2, 6]).unwrap();
    reshaped.write(&context, &[1.0; 12]).unwrap();
    assert_eq!(reshaped.to_vec(&context).unwrap(), vec![1.0; 12]);
    assert!(reshaped.write(&context, &[1.0; 3]).is_err());
    assert!(reshaped.reshape(&[5]).is_err());
    let zeros = Tensor::zeros(&context, &[0, 7]);
    assert!(zeros.is_empty());
    assert!(zeros.to_vec(&context).unwrap().is_empty());
}

#[test]
fn kernels_agree_with_parameters_as_immediates_and_as_uniform_buffers() {
    use common::{Rng, assert_close};
    use gpu::context::ContextOptions;
    use gpu::kernels::matmul::{Activation, Matmul, MatmulKernel};
    use gpu::kernels::rows;
    let mut rng = Rng::new(50);
    let spec = Matmul::new(37, 45, 29, true, false).with_epilogue(true, Activation::Gelu);
    let a = rng.vec(37 * 29);
    let b = rng.vec(29 * 45);
    let bias = rng.vec(45);
    let mut expected = vec![0.0; 37 * 45];
    spec.run_cpu(&a, &b, Some(&bias), &mut expected);
    let mut softmax = vec![0.0; 37 * 45];
    gpu::cpu::softmax(&expected, 45, 0.5, &mut softmax);
    let mut modes = Vec::new();
    for immediates in [true, false] {
        let context = GpuContext::with_options(ContextOptions { immediates }).unwrap();
        modes.push(context.uses_immediates());
        assert!(immediates || !context.uses_immediates());
        let (a_b, b_b, bias_b) =
            (context.storage_buffer_with(&a), context.storage_buffer_with(&b), context.storage_buffer_with(&bias));
        for kernel in [MatmulKernel::Direct, MatmulKernel::Tiled { bk: 8 }] {
            let (c, p) = (context.storage_buffer(37 * 45), context.storage_buffer(37 * 45));
            let mut recorder = context.recorder();
            spec.record(&mut recorder, kernel, &a_b, &b_b, Some(&bias_b), &c);
            rows::softmax(&mut recorder, &c, &p, 37, 45, 0.5);
            recorder.submit();
            let what = format!("immediates {}, {kernel:?}", context.uses_immediates());
            assert_close(&context.read_words(&c, 37 * 45).unwrap(), &expected, 1e-4, &what);
            assert_close(&context.read_words(&p, 37 * 45).unwrap(), &softmax, 1e-4, &what);
        }
    }
    eprintln!("immediates available: {}", modes[0]);
}
