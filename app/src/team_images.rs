//! A team's own training images in a campaign (`settings.team_images`): pictures the team
//! uploaded (`POST /v1/blobs`) that round 1 screens beside the model's candidates, so that the
//! T-HITL fine-tune learns from the ones people accept. They are checked when the campaign
//! starts — stored, decodable, at the base model's resolution — so that a bad upload is refused
//! with the campaign rather than failing its fine-tune hours later.

use std::path::Path;

use domain::Aggregate;
use domain::campaign::TeamImage;
use domain::ids::ModelVersionId;
use domain::model_version::ModelVersion;
use serde_json::Value;

use crate::blobs::BlobStore;
use crate::commands::{CommandBus, CommandError};

/// Why a campaign's team images were refused.
#[derive(Debug, thiserror::Error)]
pub enum TeamImageError {
    #[error("team_images: {0}")]
    Invalid(String),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The training images a model version takes: the picture formats and the side in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFormat {
    /// Width and height of the images it samples and trains on.
    pub side: usize,
    /// JPEG besides PNG (Stable Diffusion); the reference world reads PNG only.
    pub jpeg: bool,
}

/// What images `model` (or the base version it derives from) trains on; `None` for a family
/// thitl cannot tell (its images are then checked when its fine-tune decodes them).
pub fn image_format(bus: &CommandBus, model: ModelVersionId) -> Result<Option<ImageFormat>, TeamImageError> {
    let mut id = model;
    // A derived version's config is its base version's (at most a short chain).
    for _ in 0..16 {
        let (version, _) = bus.load::<ModelVersion>(&id.stream())?;
        if !version.exists() {
            return Err(TeamImageError::Invalid(format!("model version {id} does not exist")));
        }
        match (version.parent, &version.config) {
            (Some(parent), _) => id = parent,
            (None, Some(config)) => return format_of(config),
            (None, None) => return Ok(None),
        }
    }
    Ok(None)
}

/// The format a base version's registration config implies.
fn format_of(config: &Value) -> Result<Option<ImageFormat>, TeamImageError> {
    match config.get("family").and_then(Value::as_str) {
        None => Ok(Some(ImageFormat { side: scenes::image::IMAGE_SIZE, jpeg: false })),
        Some(crate::sd::FAMILY) => {
            let component = |name: &str| -> Result<gpu::sd::config::ConfigFile, TeamImageError> {
                let value = config.pointer(&format!("/components/{name}")).ok_or_else(|| {
                    TeamImageError::Invalid(format!("the base model's config lacks its {name} config"))
                })?;
                gpu::sd::config::ConfigFile::parse(Path::new(&format!("{name}/config.json")), &value.to_string())
                    .map_err(|e| TeamImageError::Invalid(e.to_string()))
            };
            let unet = gpu::sd::config::UnetConfig::from_file(component("unet")?)
                .map_err(|e| TeamImageError::Invalid(e.to_string()))?;
            let vae = gpu::sd::config::VaeConfig::from_file(component("vae")?)
                .map_err(|e| TeamImageError::Invalid(e.to_string()))?;
            Ok(Some(ImageFormat { side: unet.sample_size * vae.scale_factor(), jpeg: true }))
        }
        Some(_) => Ok(None),
    }
}

/// Checks `bytes` (named `what` in errors) as a training image of `format`.
pub fn check_image(bytes: &[u8], format: ImageFormat, what: &str) -> Result<(), String> {
    if crate::blobs::is_jpeg(bytes) && !format.jpeg {
        return Err(format!("{what} is a JPEG; this model trains on PNG images"));
    }
    let (width, height) = if format.jpeg {
        let example = crate::sd::train::decode_image(bytes, what).map_err(|e| e.to_string())?;
        (example.width, example.height)
    } else {
        scenes::image::Image::from_png(bytes).map_err(|e| format!("{what} is not a usable PNG: {e}"))?;
        (format.side, format.side)
    };
    if (width, height) != (format.side, format.side) {
        return Err(format!(
            "{what} is {width}×{height}; this model trains on {side}×{side} images",
            side = format.side
        ));
    }
    Ok(())
}

/// Checks a campaign's team images against its base model: each blob stored, and a PNG (or,
/// for Stable Diffusion, a JPEG) of the model's resolution. Nothing is written.
pub fn check(
    bus: &CommandBus,
    blobs: &dyn BlobStore,
    base_model: ModelVersionId,
    images: &[TeamImage],
) -> Result<(), TeamImageError> {
    if images.is_empty() {
        return Ok(());
    }
    let format = image_format(bus, base_model)?;
    for (i, image) in images.iter().enumerate() {
        let what = format!("image {i} ({})", image.blob);
        let bytes = blobs
            .get(&image.blob)
            .map_err(|e| TeamImageError::Invalid(format!("{what} cannot be read: {e}")))?
            .ok_or_else(|| TeamImageError::Invalid(format!("{what} is not in the blob store: upload it first")))?;
        if let Some(format) = format {
            check_image(&bytes, format, &what).map_err(TeamImageError::Invalid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(side: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, side, side);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&vec![128; (side * side * 3) as usize]).unwrap();
        writer.finish().unwrap();
        bytes
    }

    #[test]
    fn images_are_checked_against_the_models_format() {
        let reference = ImageFormat { side: 32, jpeg: false };
        check_image(&png(32), reference, "a").unwrap();
        let wrong = check_image(&png(64), reference, "b").unwrap_err();
        assert!(wrong.contains("b is not a usable PNG"), "{wrong}");
        let sd = ImageFormat { side: 64, jpeg: true };
        check_image(&png(64), sd, "c").unwrap();
        let small = check_image(&png(32), sd, "d").unwrap_err();
        assert!(small.contains("d is 32×32; this model trains on 64×64"), "{small}");
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0];
        assert!(check_image(&jpeg, reference, "e").unwrap_err().contains("e is a JPEG"));
        assert!(check_image(&jpeg, sd, "f").is_err());
        assert!(check_image(b"not an image", sd, "g").is_err());
    }

    #[test]
    fn a_pipelines_resolution_comes_from_its_unet_and_vae_configs() {
        // The tiny SD 1.x fixture pipeline: a 16-latent UNet and a VAE that halves each side.
        let component = |name: &str| -> Value {
            let path =
                format!("{}/../gpu/tests/fixtures/sd/sd1/pipeline/{name}/config.json", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let (unet, vae) = (component("unet"), component("vae"));
        let side = unet["sample_size"].as_u64().unwrap() as usize
            * (1 << (vae["block_out_channels"].as_array().unwrap().len() - 1));
        let config = serde_json::json!({"family": crate::sd::FAMILY, "components": {"unet": unet, "vae": vae}});
        assert_eq!(format_of(&config).unwrap(), Some(ImageFormat { side, jpeg: true }));
        assert_eq!(format_of(&serde_json::json!({})).unwrap(), Some(ImageFormat { side: 32, jpeg: false }));
        assert_eq!(format_of(&serde_json::json!({"family": "other"})).unwrap(), None);
        assert!(format_of(&serde_json::json!({"family": crate::sd::FAMILY})).is_err());
    }
}
