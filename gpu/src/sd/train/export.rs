//! A trained UNet adapter in the formats other tools load:
//! - [`peft_file`]: diffusers' `pytorch_lora_weights.safetensors` (`unet.<module>.lora_A.weight`
//!   / `lora_B.weight`) with the rank, alpha and target modules in the header's
//!   `lora_adapter_metadata`, as `save_lora_weights` writes it, so that `load_lora_weights(dir)`
//!   scales the update by alpha/r (without the metadata diffusers assumes alpha = r);
//! - [`kohya_file`]: `lora_unet_<module with underscores>.lora_down.weight`, `.lora_up.weight`
//!   and a scalar `.alpha` (ComfyUI, A1111, diffusers' kohya loader);
//! - [`merge_into`]: the UNet's own weights with `alpha/r · B·A` added, for `from_pretrained`.

use std::collections::HashMap;

use crate::sd::weights::{ComponentWeights, HostTensor};

use super::LoraSettings;

/// One tensor of an adapter: (PEFT key `unet.<module>.lora_{A,B}.weight`, shape, values).
pub type AdapterTensor = (String, [usize; 2], Vec<f32>);

/// An adapter's tensors.
pub type AdapterTensors = [AdapterTensor];

/// The header metadata diffusers reads back into a `LoraConfig`.
fn peft_metadata(settings: &LoraSettings) -> HashMap<String, String> {
    let mut targets = settings.targets.clone();
    targets.sort();
    let config = serde_json::json!({
        "unet.r": settings.rank,
        "unet.lora_alpha": settings.alpha,
        "unet.target_modules": targets,
        "unet.lora_dropout": 0.0,
        "unet.bias": "none",
        "unet.use_rslora": false,
        "unet.use_dora": false,
        "unet.init_lora_weights": true,
        "unet.peft_type": "LORA",
        "unet.task_type": null,
    });
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("lora_adapter_metadata".to_string(), serde_json::to_string_pretty(&config).expect("plain JSON")),
    ])
}

/// diffusers/PEFT safetensors bytes.
pub fn peft_file(adapter: &AdapterTensors, settings: &LoraSettings) -> Result<Vec<u8>, String> {
    crate::tensor::f32_safetensors(
        adapter.iter().map(|(key, shape, values)| (key.as_str(), &shape[..], values.as_slice())),
        Some(peft_metadata(settings)),
    )
}

/// The module path and which matrix a PEFT key names.
fn split_key(key: &str) -> Result<(&str, bool), String> {
    let rest = key.strip_prefix("unet.").ok_or_else(|| format!("{key}: not a UNet adapter key"))?;
    if let Some(module) = rest.strip_suffix(".lora_A.weight") {
        Ok((module, true))
    } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
        Ok((module, false))
    } else {
        Err(format!("{key}: neither lora_A nor lora_B"))
    }
}

/// kohya safetensors bytes.
pub fn kohya_file(adapter: &AdapterTensors, settings: &LoraSettings) -> Result<Vec<u8>, String> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (key, shape, values) in adapter {
        let (module, is_a) = split_key(key)?;
        let name = format!("lora_unet_{}", module.replace('.', "_"));
        let suffix = if is_a { "lora_down.weight" } else { "lora_up.weight" };
        tensors.push((format!("{name}.{suffix}"), shape.to_vec(), values.clone()));
        if is_a {
            tensors.push((format!("{name}.alpha"), Vec::new(), vec![settings.alpha]));
        }
    }
    let metadata = HashMap::from([
        ("ss_network_module".to_string(), "networks.lora".to_string()),
        ("ss_network_dim".to_string(), settings.rank.to_string()),
        ("ss_network_alpha".to_string(), settings.alpha.to_string()),
    ]);
    crate::tensor::f32_safetensors(
        tensors.iter().map(|(name, shape, values)| (name.as_str(), shape.as_slice(), values.as_slice())),
        Some(metadata),
    )
}

/// Adds `alpha/r · B·A` to each adapted weight of `unet` (diffusers names).
pub fn merge_into(
    unet: &mut ComponentWeights,
    adapter: &AdapterTensors,
    settings: &LoraSettings,
) -> Result<(), String> {
    let mut pairs: HashMap<&str, (Option<&HostTensorRef<'_>>, Option<&HostTensorRef<'_>>)> = HashMap::new();
    let refs: Vec<HostTensorRef<'_>> =
        adapter.iter().map(|(key, shape, values)| HostTensorRef { key, shape: *shape, values }).collect();
    for tensor in &refs {
        let (module, is_a) = split_key(tensor.key)?;
        let entry = pairs.entry(module).or_default();
        if is_a {
            entry.0 = Some(tensor);
        } else {
            entry.1 = Some(tensor);
        }
    }
    let scale = settings.alpha / settings.rank as f32;
    let mut modules: Vec<_> = pairs.into_iter().collect();
    modules.sort_by_key(|(module, _)| *module);
    for (module, pair) in modules {
        let (Some(a), Some(b)) = pair else {
            return Err(format!("{module}: the adapter lacks lora_A or lora_B"));
        };
        let name = format!("{module}.weight");
        let HostTensor { shape, mut data } =
            unet.remove(&name).ok_or_else(|| format!("the UNet has no {name} for the adapter's {module}"))?;
        let ([rank, inputs], [outputs, rank_b]) = (a.shape, b.shape);
        if rank != rank_b || shape != [outputs, inputs] {
            return Err(format!("{module}: A {:?} and B {:?} do not fit the weight {shape:?}", a.shape, b.shape));
        }
        for o in 0..outputs {
            let row = &mut data[o * inputs..][..inputs];
            for r in 0..rank {
                let factor = scale * b.values[o * rank + r];
                for (w, x) in row.iter_mut().zip(&a.values[r * inputs..][..inputs]) {
                    *w += factor * x;
                }
            }
        }
        unet.insert(name, HostTensor { shape, data });
    }
    Ok(())
}

/// `unet` (diffusers names) with the adapter merged, as one f32 safetensors file
/// (`unet/diffusion_pytorch_model.safetensors` for `from_pretrained`, beside the base's config).
pub fn merged_unet_file(
    mut unet: ComponentWeights,
    adapter: &AdapterTensors,
    settings: &LoraSettings,
) -> Result<Vec<u8>, String> {
    merge_into(&mut unet, adapter, settings)?;
    let names: Vec<String> = unet.names().into_iter().map(str::to_string).collect();
    let tensors: Vec<(String, HostTensor)> =
        names.into_iter().filter_map(|name| unet.remove(&name).map(|tensor| (name, tensor))).collect();
    crate::tensor::f32_safetensors(
        tensors.iter().map(|(name, t)| (name.as_str(), t.shape.as_slice(), t.data.as_slice())),
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
    )
}

struct HostTensorRef<'a> {
    key: &'a str,
    shape: [usize; 2],
    values: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sd::lora::{LoraAdapter, Target};

    fn adapter() -> (Vec<AdapterTensor>, LoraSettings) {
        let module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
        let tensors = vec![
            (format!("unet.{module}.lora_A.weight"), [1, 3], vec![1.0, 0.0, -1.0]),
            (format!("unet.{module}.lora_B.weight"), [2, 1], vec![2.0, -3.0]),
        ];
        (tensors, LoraSettings { rank: 1, alpha: 0.5, targets: vec!["to_q".into()] })
    }

    /// Both formats read back through the reader that loads other tools' adapters, with the
    /// scale alpha/r; the merge adds scale·B·A, computed by hand.
    #[test]
    fn exports_read_back_with_their_scale_and_merge_by_hand() {
        let (tensors, settings) = adapter();
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("peft.safetensors", peft_file(&tensors, &settings).unwrap()),
            ("kohya.safetensors", kohya_file(&tensors, &settings).unwrap()),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let read = LoraAdapter::read(&path).unwrap();
            let modules = read.modules(Target::Unet);
            assert_eq!(modules.len(), 1, "{name}");
            assert_eq!(modules[0].scale, 0.5, "{name}: alpha/r");
            assert_eq!(modules[0].down.data, tensors[0].2, "{name}: A");
            assert_eq!(modules[0].up.data, tensors[1].2, "{name}: B");
        }
        let module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
        let mut unet = ComponentWeights::from_tensors(
            vec!["unet.safetensors".into()],
            HashMap::from([(
                format!("{module}.weight"),
                HostTensor { shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] },
            )]),
        );
        merge_into(&mut unet, &tensors, &settings).unwrap();
        // 0.5 · B·A = 0.5 · [[2, 0, -2], [-3, 0, 3]]
        let merged = unet.remove(&format!("{module}.weight")).unwrap();
        assert_eq!(merged.data, vec![2.0, 2.0, 2.0, 2.5, 5.0, 7.5]);
        let mut missing = ComponentWeights::from_tensors(vec!["unet.safetensors".into()], HashMap::new());
        assert!(merge_into(&mut missing, &tensors, &settings).unwrap_err().contains("has no"));
    }
}
