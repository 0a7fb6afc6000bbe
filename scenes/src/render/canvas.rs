//! Flat-colour drawing on a 32×32 RGB buffer. A pixel is covered when its centre lies inside a
//! shape: no anti-aliasing, so every shape has crisp, flat colours a small model can reproduce.

use crate::image::{CHANNELS, IMAGE_SIZE, IMAGE_VALUES, Image};
use crate::rng::Rng;

pub(crate) type Rgb = [u8; 3];

pub(crate) struct Canvas {
    rgb: [u8; IMAGE_VALUES],
}

const SIZE: i32 = IMAGE_SIZE as i32;

impl Canvas {
    pub(crate) fn new() -> Canvas {
        Canvas { rgb: [0; IMAGE_VALUES] }
    }

    pub(crate) fn into_image(self) -> Image {
        Image::from_array(self.rgb)
    }

    pub(crate) fn put(&mut self, x: i32, y: i32, colour: Rgb) {
        if (0..SIZE).contains(&x) && (0..SIZE).contains(&y) {
            let start = (y as usize * IMAGE_SIZE + x as usize) * CHANNELS;
            self.rgb[start..start + CHANNELS].copy_from_slice(&colour);
        }
    }

    /// Covers every pixel in the bounding box `[left, right] × [top, bottom]` whose centre
    /// satisfies `inside`.
    pub(crate) fn fill_where(&mut self, bounds: [f32; 4], colour: Rgb, inside: impl Fn(f32, f32) -> bool) {
        let [left, top, right, bottom] = bounds;
        let x_range = (left.floor().max(0.0) as i32)..=(right.ceil().min((SIZE - 1) as f32) as i32);
        for y in (top.floor().max(0.0) as i32)..=(bottom.ceil().min((SIZE - 1) as f32) as i32) {
            for x in x_range.clone() {
                if inside(x as f32 + 0.5, y as f32 + 0.5) {
                    self.put(x, y, colour);
                }
            }
        }
    }

    /// Pixels with centres in `[left, right) × [top, bottom)`.
    pub(crate) fn rect(&mut self, left: f32, top: f32, right: f32, bottom: f32, colour: Rgb) {
        self.fill_where([left, top, right, bottom], colour, |x, y| x >= left && x < right && y >= top && y < bottom);
    }

    pub(crate) fn ellipse(&mut self, centre_x: f32, centre_y: f32, radius_x: f32, radius_y: f32, colour: Rgb) {
        let bounds = [centre_x - radius_x, centre_y - radius_y, centre_x + radius_x, centre_y + radius_y];
        self.fill_where(bounds, colour, |x, y| {
            let (dx, dy) = ((x - centre_x) / radius_x, (y - centre_y) / radius_y);
            dx * dx + dy * dy <= 1.0
        });
    }

    pub(crate) fn circle(&mut self, centre_x: f32, centre_y: f32, radius: f32, colour: Rgb) {
        self.ellipse(centre_x, centre_y, radius, radius, colour);
    }

    /// The upper half of an ellipse (flat side down at `base_y`).
    pub(crate) fn upper_half_ellipse(&mut self, centre_x: f32, base_y: f32, radius_x: f32, radius_y: f32, colour: Rgb) {
        let bounds = [centre_x - radius_x, base_y - radius_y, centre_x + radius_x, base_y];
        self.fill_where(bounds, colour, |x, y| {
            let (dx, dy) = ((x - centre_x) / radius_x, (y - base_y) / radius_y);
            y <= base_y && dx * dx + dy * dy <= 1.0
        });
    }

    /// A ring between `inner` and `outer` radii.
    pub(crate) fn ring(&mut self, centre_x: f32, centre_y: f32, outer: f32, inner: f32, colour: Rgb) {
        let bounds = [centre_x - outer, centre_y - outer, centre_x + outer, centre_y + outer];
        self.fill_where(bounds, colour, |x, y| {
            let distance = ((x - centre_x).powi(2) + (y - centre_y).powi(2)).sqrt();
            distance <= outer && distance >= inner
        });
    }

    /// A segment `width` pixels thick with round ends.
    pub(crate) fn line(&mut self, from: (f32, f32), to: (f32, f32), width: f32, colour: Rgb) {
        let half = width / 2.0;
        let bounds =
            [from.0.min(to.0) - half, from.1.min(to.1) - half, from.0.max(to.0) + half, from.1.max(to.1) + half];
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let length_squared = (dx * dx + dy * dy).max(1e-6);
        self.fill_where(bounds, colour, |x, y| {
            let along = (((x - from.0) * dx + (y - from.1) * dy) / length_squared).clamp(0.0, 1.0);
            let (nearest_x, nearest_y) = (from.0 + along * dx, from.1 + along * dy);
            (x - nearest_x).powi(2) + (y - nearest_y).powi(2) <= half * half
        });
    }

    /// A polygon filled by the even-odd rule.
    pub(crate) fn polygon(&mut self, points: &[(f32, f32)], colour: Rgb) {
        let left = points.iter().map(|p| p.0).fold(f32::INFINITY, f32::min);
        let right = points.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
        let top = points.iter().map(|p| p.1).fold(f32::INFINITY, f32::min);
        let bottom = points.iter().map(|p| p.1).fold(f32::NEG_INFINITY, f32::max);
        self.fill_where([left, top, right, bottom], colour, |x, y| {
            let mut inside = false;
            let mut previous = points[points.len() - 1];
            for &current in points {
                if (current.1 > y) != (previous.1 > y) {
                    let crossing = previous.0 + (y - previous.1) / (current.1 - previous.1) * (current.0 - previous.0);
                    if x < crossing {
                        inside = !inside;
                    }
                }
                previous = current;
            }
            inside
        });
    }

    /// Fills every row from `top` (inclusive) to `bottom` (exclusive) with a vertical gradient.
    pub(crate) fn vertical_gradient(&mut self, top: i32, bottom: i32, from: Rgb, to: Rgb) {
        let span = (bottom - top).max(1) as f32;
        for y in top.max(0)..bottom.min(SIZE) {
            let colour = blend(from, to, (y - top) as f32 / span);
            for x in 0..SIZE {
                self.put(x, y, colour);
            }
        }
    }
}

/// `from` moved a fraction `amount` of the way to `to`.
pub(crate) fn blend(from: Rgb, to: Rgb, amount: f32) -> Rgb {
    std::array::from_fn(|channel| {
        (f32::from(from[channel]) + (f32::from(to[channel]) - f32::from(from[channel])) * amount).round() as u8
    })
}

/// A shade of `base` within its colour family: one brightness offset of up to ±`amount` shared by
/// all channels, plus a per-channel wobble of up to a quarter of that.
pub(crate) fn shade(rng: &mut Rng, base: Rgb, amount: i32) -> Rgb {
    let brightness = rng.int_between(-amount, amount);
    let wobble = (amount / 4).max(0);
    std::array::from_fn(|channel| {
        (i32::from(base[channel]) + brightness + rng.int_between(-wobble, wobble)).clamp(0, 255) as u8
    })
}

/// `base` made darker (`amount` < 0) or lighter (`amount` > 0) by a fixed step.
pub(crate) fn tone(base: Rgb, amount: i32) -> Rgb {
    std::array::from_fn(|channel| (i32::from(base[channel]) + amount).clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(canvas: &Canvas) -> usize {
        canvas.rgb.chunks_exact(3).filter(|pixel| pixel != &[0, 0, 0]).count()
    }

    #[test]
    fn shapes_cover_the_expected_pixels() {
        let mut canvas = Canvas::new();
        canvas.rect(2.0, 3.0, 6.0, 5.0, [255, 0, 0]);
        assert_eq!(covered(&canvas), 8);
        assert_eq!(canvas.into_image().pixel(2, 3), [255, 0, 0]);

        let mut canvas = Canvas::new();
        canvas.circle(16.0, 16.0, 4.0, [0, 255, 0]);
        let area = covered(&canvas) as f32;
        assert!((area - std::f32::consts::PI * 16.0).abs() < 6.0, "circle area {area}");

        let mut canvas = Canvas::new();
        canvas.polygon(&[(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)], [0, 0, 255]);
        let area = covered(&canvas) as f32;
        assert!((area - 50.0).abs() < 8.0, "triangle area {area}");

        let mut canvas = Canvas::new();
        canvas.line((-5.0, 10.5), (40.0, 10.5), 1.0, [9, 9, 9]);
        assert_eq!(covered(&canvas), 32, "a horizontal line clipped to the canvas");
    }
}
