//! [`Image`]: a 32×32 RGB picture, the unit the renderer draws, the model trains on and the rater
//! judges; conversions to the model's tensor layout and to PNG.

/// Width and height of every image of the reference world, in pixels.
pub const IMAGE_SIZE: usize = 32;
/// Colour channels (RGB).
pub const CHANNELS: usize = 3;
/// Number of values in an image: height × width × channels.
pub const IMAGE_VALUES: usize = IMAGE_SIZE * IMAGE_SIZE * CHANNELS;

/// A 32×32 RGB image, 8 bits per channel, stored row-major with interleaved channels (HWC).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Image {
    rgb: [u8; IMAGE_VALUES],
}

/// Why bytes or values could not become an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("an image needs exactly {expected} values (32×32×3), got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("not a 32×32 RGB PNG: {0}")]
    NotAnImagePng(String),
}

impl std::fmt::Debug for Image {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // 3,072 bytes help nobody in a failed assertion; a content hash tells images apart.
        let digest = self
            .rgb
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
        write!(formatter, "Image(32×32 RGB, fnv1a {digest:016x})")
    }
}

impl Image {
    /// An image of one colour.
    pub fn filled(colour: [u8; 3]) -> Image {
        let mut rgb = [0; IMAGE_VALUES];
        for pixel in rgb.chunks_exact_mut(CHANNELS) {
            pixel.copy_from_slice(&colour);
        }
        Image { rgb }
    }

    /// Wraps row-major RGB bytes (HWC).
    pub fn from_rgb(bytes: &[u8]) -> Result<Image, ImageError> {
        let rgb = bytes.try_into().map_err(|_| ImageError::WrongLength { expected: IMAGE_VALUES, got: bytes.len() })?;
        Ok(Image { rgb })
    }

    pub(crate) fn from_array(rgb: [u8; IMAGE_VALUES]) -> Image {
        Image { rgb }
    }

    /// The row-major RGB bytes (HWC).
    pub fn as_rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The colour at column `x`, row `y` (both below 32).
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let start = (y * IMAGE_SIZE + x) * CHANNELS;
        [self.rgb[start], self.rgb[start + 1], self.rgb[start + 2]]
    }

    /// Mean absolute difference per value, in 0..=255: how far apart two images are.
    pub fn mean_abs_diff(&self, other: &Image) -> f32 {
        let total: u32 = self.rgb.iter().zip(&other.rgb).map(|(a, b)| u32::from(a.abs_diff(*b))).sum();
        total as f32 / IMAGE_VALUES as f32
    }

    /// The model's training layout: `[3, 32, 32]` (channel-major, CHW), values in `[-1, 1]`.
    pub fn to_chw_f32(&self) -> Vec<f32> {
        let mut values = vec![0.0; IMAGE_VALUES];
        for (index, &byte) in self.rgb.iter().enumerate() {
            let channel = index % CHANNELS;
            let position = index / CHANNELS;
            values[channel * IMAGE_SIZE * IMAGE_SIZE + position] = f32::from(byte) / 127.5 - 1.0;
        }
        values
    }

    /// The inverse of [`Image::to_chw_f32`] for model outputs: values are clamped to `[-1, 1]`
    /// and rounded to the nearest byte; NaN becomes -1 (black).
    pub fn from_chw_f32(values: &[f32]) -> Result<Image, ImageError> {
        if values.len() != IMAGE_VALUES {
            return Err(ImageError::WrongLength { expected: IMAGE_VALUES, got: values.len() });
        }
        let mut rgb = [0; IMAGE_VALUES];
        for (index, byte) in rgb.iter_mut().enumerate() {
            let channel = index % CHANNELS;
            let position = index / CHANNELS;
            let value = values[channel * IMAGE_SIZE * IMAGE_SIZE + position];
            let value = if value.is_nan() { -1.0 } else { value.clamp(-1.0, 1.0) };
            *byte = ((value + 1.0) * 127.5).round() as u8;
        }
        Ok(Image { rgb })
    }

    /// Decodes a PNG of a 32×32 picture ([`Image::to_png`] at scale 1): 8-bit RGB, or 8-bit RGBA
    /// with the alpha dropped.
    pub fn from_png(bytes: &[u8]) -> Result<Image, ImageError> {
        let bad = |problem: String| ImageError::NotAnImagePng(problem);
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
        let size = reader.output_buffer_size().ok_or_else(|| bad("its size overflows".to_string()))?;
        if size > 64 * IMAGE_VALUES {
            return Err(bad(format!("{size} bytes of pixels is far too big")));
        }
        let mut buffer = vec![0; size];
        let info = reader.next_frame(&mut buffer).map_err(|e| bad(e.to_string()))?;
        if (info.width as usize, info.height as usize) != (IMAGE_SIZE, IMAGE_SIZE)
            || info.bit_depth != png::BitDepth::Eight
        {
            return Err(bad(format!("{}×{} at {:?}", info.width, info.height, info.bit_depth)));
        }
        buffer.truncate(info.buffer_size());
        let rgb: Vec<u8> = match info.color_type {
            png::ColorType::Rgb => buffer,
            png::ColorType::Rgba => buffer.chunks_exact(4).flat_map(|pixel| [pixel[0], pixel[1], pixel[2]]).collect(),
            other => return Err(bad(format!("colour type {other:?}"))),
        };
        Image::from_rgb(&rgb)
    }

    /// The image as a PNG, each pixel drawn as a `scale`×`scale` block (nearest neighbour;
    /// a scale of 0 counts as 1).
    pub fn to_png(&self, scale: usize) -> Vec<u8> {
        grid_png(std::slice::from_ref(self), 1, scale)
    }
}

/// Gap between grid cells, in source pixels (drawn in dark grey).
const GRID_GAP: usize = 1;
const GRID_GAP_COLOUR: [u8; 3] = [40, 40, 40];

/// Lays `images` out in rows of `columns` (at least 1), separated by a 1-pixel dark line, scales
/// the whole by `scale` (nearest neighbour; 0 counts as 1) and encodes it as PNG. An empty slice
/// gives a single gap-coloured cell.
pub fn grid_png(images: &[Image], columns: usize, scale: usize) -> Vec<u8> {
    let columns = columns.max(1).min(images.len().max(1));
    let rows = images.len().div_ceil(columns).max(1);
    let scale = scale.max(1);
    let cell = IMAGE_SIZE + GRID_GAP;
    let (source_width, source_height) =
        if images.len() == 1 { (IMAGE_SIZE, IMAGE_SIZE) } else { (columns * cell - GRID_GAP, rows * cell - GRID_GAP) };
    let mut source = vec![0u8; source_width * source_height * CHANNELS];
    for pixel in source.chunks_exact_mut(CHANNELS) {
        pixel.copy_from_slice(&GRID_GAP_COLOUR);
    }
    for (number, image) in images.iter().enumerate() {
        let (left, top) = ((number % columns) * cell, (number / columns) * cell);
        for y in 0..IMAGE_SIZE {
            let target = ((top + y) * source_width + left) * CHANNELS;
            let row = &image.rgb[y * IMAGE_SIZE * CHANNELS..(y + 1) * IMAGE_SIZE * CHANNELS];
            source[target..target + row.len()].copy_from_slice(row);
        }
    }
    let (width, height) = (source_width * scale, source_height * scale);
    let mut scaled = Vec::with_capacity(width * height * CHANNELS);
    for y in 0..height {
        for x in 0..width {
            let start = ((y / scale) * source_width + x / scale) * CHANNELS;
            scaled.extend_from_slice(&source[start..start + CHANNELS]);
        }
    }
    encode_png(&scaled, width, height)
}

fn encode_png(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    // Writing a well-formed RGB8 buffer of non-zero size into a Vec cannot fail.
    let mut writer = encoder.write_header().expect("PNG header for a non-empty RGB8 image");
    writer.write_image_data(rgb).expect("PNG data matching the header's size");
    writer.finish().expect("PNG end into a Vec");
    png_bytes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes a PNG (RGB8) into (width, height, bytes) with the png crate.
    pub(crate) fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut buffer = vec![0; reader.output_buffer_size().expect("a size")];
        let info = reader.next_frame(&mut buffer).expect("a frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buffer.truncate(info.buffer_size());
        (info.width as usize, info.height as usize, buffer)
    }

    fn gradient() -> Image {
        let mut rgb = [0; IMAGE_VALUES];
        for (index, byte) in rgb.iter_mut().enumerate() {
            *byte = (index * 7 % 256) as u8;
        }
        Image::from_array(rgb)
    }

    #[test]
    fn chw_round_trip_and_layout() {
        let image = gradient();
        let values = image.to_chw_f32();
        assert_eq!(values.len(), 3 * 32 * 32);
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
        // Green channel of pixel (x=5, y=2) sits at [1, 2, 5].
        let expected = f32::from(image.pixel(5, 2)[1]) / 127.5 - 1.0;
        assert_eq!(values[32 * 32 + 2 * 32 + 5], expected);
        assert_eq!(Image::from_chw_f32(&values).unwrap(), image);
    }

    #[test]
    fn from_chw_clamps_and_rejects_wrong_lengths() {
        let mut values = vec![5.0f32; IMAGE_VALUES];
        values[0] = -3.0;
        values[1] = f32::NAN;
        let image = Image::from_chw_f32(&values).unwrap();
        assert_eq!(image.pixel(0, 0), [0, 255, 255]);
        assert_eq!(image.pixel(1, 0), [0, 255, 255]);
        assert_eq!(image.pixel(2, 0), [255, 255, 255]);
        assert_eq!(
            Image::from_chw_f32(&values[..10]),
            Err(ImageError::WrongLength { expected: IMAGE_VALUES, got: 10 })
        );
        assert_eq!(Image::from_rgb(&[0; 5]), Err(ImageError::WrongLength { expected: IMAGE_VALUES, got: 5 }));
    }

    #[test]
    fn png_round_trip_at_scale_one_and_four() {
        let image = gradient();
        let (width, height, bytes) = decode_png(&image.to_png(1));
        assert_eq!((width, height), (32, 32));
        assert_eq!(bytes, image.as_rgb());

        assert_eq!(Image::from_png(&image.to_png(1)), Ok(image.clone()));
        assert!(matches!(Image::from_png(&image.to_png(2)), Err(ImageError::NotAnImagePng(_))));
        assert!(matches!(Image::from_png(b"not a png"), Err(ImageError::NotAnImagePng(_))));

        let (width, height, bytes) = decode_png(&image.to_png(4));
        assert_eq!((width, height), (128, 128));
        for (x, y) in [(0, 0), (13, 7), (31, 31), (20, 3)] {
            for (dx, dy) in [(0, 0), (3, 3), (1, 2)] {
                let start = ((y * 4 + dy) * 128 + x * 4 + dx) * 3;
                assert_eq!(bytes[start..start + 3], image.pixel(x, y), "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn grid_places_images_in_rows_with_gaps() {
        let red = Image::filled([255, 0, 0]);
        let blue = Image::filled([0, 0, 255]);
        let (width, height, bytes) = decode_png(&grid_png(&[red.clone(), blue.clone(), red], 2, 2));
        assert_eq!((width, height), ((2 * 33 - 1) * 2, (2 * 33 - 1) * 2));
        let at = |x: usize, y: usize| bytes[(y * width + x) * 3..(y * width + x) * 3 + 3].to_vec();
        assert_eq!(at(0, 0), vec![255, 0, 0]);
        assert_eq!(at(33 * 2, 0), vec![0, 0, 255]);
        assert_eq!(at(0, 33 * 2), vec![255, 0, 0]);
        assert_eq!(at(32 * 2, 0), GRID_GAP_COLOUR.to_vec());
        assert_eq!(at(33 * 2, 33 * 2), GRID_GAP_COLOUR.to_vec(), "the missing fourth cell stays empty");
        let (width, height, _) = decode_png(&grid_png(&[], 3, 1));
        assert_eq!((width, height), (32, 32));
    }
}
