//! The objects (concepts). Each differs from every other by silhouette and colour family:
//!
//! | concept | silhouette | colours |
//! |---|---|---|
//! | hippopotamus | big rounded body, broad head and muzzle, stubby legs | grey-purple |
//! | vegetable | a carrot: long downward cone with a leafy top | orange and green |
//! | sheep | fluffy oval with a dark head and thin legs | white wool, black face and legs |
//! | ball | small disc with a band | bright blue and white |
//! | tree | round crown on a trunk | dark green over brown |
//! | dog | low body on four legs, raised tail, floppy ear | mid brown, dark brown ear |
//! | umbrella | half-disc canopy on a hooked handle | magenta, dark handle |
//! | book | upright rectangle with page edges | red, white, gold title |

use super::canvas::{Canvas, shade, tone};
use crate::rng::Rng;
use crate::world::Concept;

/// Widest extent of each object from its centre, used to keep it on the canvas.
pub(crate) fn object_half_width(concept: Concept) -> f32 {
    match concept {
        Concept::Hippopotamus => 7.0,
        Concept::Sheep | Concept::Dog | Concept::Umbrella | Concept::Tree => 6.2,
        Concept::Vegetable | Concept::Ball | Concept::Book => 4.5,
    }
}

/// Draws `concept` standing on `ground_y`, centred near `centre_x`, turned towards `facing`.
pub(crate) fn draw_object(
    canvas: &mut Canvas,
    rng: &mut Rng,
    concept: Concept,
    centre_x: f32,
    ground_y: f32,
    facing: f32,
) {
    match concept {
        Concept::Hippopotamus => hippopotamus(canvas, rng, centre_x, ground_y, facing),
        Concept::Vegetable => vegetable(canvas, rng, centre_x, ground_y),
        Concept::Sheep => sheep(canvas, rng, centre_x, ground_y, facing),
        Concept::Ball => ball(canvas, rng, centre_x, ground_y),
        Concept::Tree => tree(canvas, rng, centre_x, ground_y),
        Concept::Dog => dog(canvas, rng, centre_x, ground_y, facing),
        Concept::Umbrella => umbrella(canvas, rng, centre_x, ground_y),
        Concept::Book => book(canvas, rng, centre_x, ground_y, facing),
    }
}

fn hippopotamus(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32, facing: f32) {
    let length = rng.range(11.0, 13.5);
    let skin = shade(rng, [140, 118, 164], 12);
    let dark = tone(skin, -60);
    let (radius_x, radius_y) = (length * 0.36, length * 0.27);
    let body = (x - facing * length * 0.1, ground - 2.2 - radius_y + 0.6);
    for (offset, colour) in [(-0.6, tone(skin, -25)), (-0.25, skin), (0.3, tone(skin, -25)), (0.62, skin)] {
        let leg_x = body.0 + facing * offset * radius_x;
        canvas.rect(leg_x - 0.9, body.1, leg_x + 0.9, ground, colour);
    }
    canvas.ellipse(body.0, body.1, radius_x, radius_y, skin);
    let head = (body.0 + facing * radius_x * 0.95, body.1 - radius_y * 0.2);
    let head_radius = (length * 0.2, length * 0.18);
    canvas.ellipse(head.0, head.1, head_radius.0, head_radius.1, skin);
    let muzzle = (head.0 + facing * length * 0.13, head.1 + length * 0.07);
    canvas.ellipse(muzzle.0, muzzle.1, length * 0.14, length * 0.13, tone(skin, 18));
    for ear_offset in [-0.6, 0.5] {
        canvas.put((head.0 + facing * ear_offset).floor() as i32, (head.1 - head_radius.1 - 0.4).floor() as i32, dark);
    }
    canvas.put((head.0 + facing * 0.6).floor() as i32, (head.1 - 1.0).floor() as i32, [24, 18, 30]);
    canvas.put((muzzle.0 + facing * length * 0.08).floor() as i32, (muzzle.1 - 0.8).floor() as i32, dark);
}

fn vegetable(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32) {
    let length = rng.range(8.0, 10.5);
    let tilt = rng.range(-0.45, 0.45);
    let orange = shade(rng, [240, 128, 24], 10);
    let leaf = shade(rng, [52, 158, 48], 12);
    let (along_x, along_y) = (tilt.sin(), tilt.cos()); // from the top down to the tip
    let tip = (x + along_x * length * 0.5, ground - 0.6);
    let top = (tip.0 - along_x * length, tip.1 - along_y * length);
    let half_width = length * 0.2;
    let across = (along_y * half_width, -along_x * half_width);
    for (angle, colour) in [(-0.55, leaf), (0.0, tone(leaf, 25)), (0.55, leaf)] {
        let direction = tilt + angle;
        let end = (top.0 - direction.sin() * length * 0.42, top.1 - direction.cos() * length * 0.42);
        canvas.line(top, end, 1.4, colour);
    }
    canvas.polygon(&[(top.0 + across.0, top.1 + across.1), (top.0 - across.0, top.1 - across.1), tip], orange);
    canvas.circle(top.0, top.1 + 0.3, half_width, orange);
    for fraction in [0.35, 0.6] {
        let centre = (top.0 + along_x * length * fraction, top.1 + along_y * length * fraction);
        let reach = (1.0 - fraction) * 0.9;
        canvas.line((centre.0 - across.0 * reach, centre.1 - across.1 * reach), centre, 0.9, tone(orange, -55));
    }
}

fn sheep(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32, facing: f32) {
    let length = rng.range(9.5, 12.0);
    let wool = shade(rng, [246, 246, 240], 5);
    let outline = shade(rng, [150, 150, 146], 8);
    let black = shade(rng, [28, 26, 28], 6);
    let (radius_x, radius_y) = (length * 0.38, length * 0.26);
    let body = (x - facing * length * 0.08, ground - 2.6 - radius_y + 0.8);
    for offset in [-0.55, -0.2, 0.25, 0.55] {
        let leg_x = body.0 + facing * offset * radius_x;
        canvas.line((leg_x, body.1), (leg_x, ground - 0.5), 1.2, black);
    }
    let bumps: Vec<(f32, f32)> =
        (0..4).map(|index| (body.0 + (index as f32 - 1.5) * radius_x * 0.5, body.1 - radius_y * 0.75)).collect();
    let bump_radius = length * 0.14;
    canvas.ellipse(body.0, body.1, radius_x + 0.7, radius_y + 0.7, outline);
    for &(bump_x, bump_y) in &bumps {
        canvas.circle(bump_x, bump_y, bump_radius + 0.7, outline);
    }
    canvas.ellipse(body.0, body.1, radius_x, radius_y, wool);
    for &(bump_x, bump_y) in &bumps {
        canvas.circle(bump_x, bump_y, bump_radius, wool);
    }
    let head = (body.0 + facing * radius_x * 1.05, body.1 - radius_y * 0.35);
    canvas.ellipse(head.0, head.1, length * 0.13, length * 0.17, black);
    canvas.line(
        (head.0 - facing * 0.6, head.1 - length * 0.1),
        (head.0 - facing * 2.0, head.1 - length * 0.06),
        1.0,
        black,
    );
}

fn ball(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32) {
    let radius = rng.range(3.0, 4.2);
    let blue = shade(rng, [32, 92, 226], 12);
    let band = shade(rng, [246, 246, 250], 4);
    let centre = (x, ground - radius);
    let slope = rng.range(-0.5, 0.5);
    canvas.circle(centre.0, centre.1, radius, blue);
    let bounds = [centre.0 - radius, centre.1 - radius, centre.0 + radius, centre.1 + radius];
    canvas.fill_where(bounds, band, |px, py| {
        let inside = (px - centre.0).powi(2) + (py - centre.1).powi(2) <= radius * radius;
        inside && (py - centre.1 - slope * (px - centre.0)).abs() <= 0.75
    });
    canvas.put((centre.0 - radius * 0.45).floor() as i32, (centre.1 - radius * 0.55).floor() as i32, tone(blue, 110));
}

fn tree(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32) {
    let trunk_height = rng.range(4.0, 6.0);
    let crown_radius = rng.range(3.6, 4.8);
    let bark = shade(rng, [110, 68, 34], 8);
    let green = shade(rng, [34, 118, 44], 10);
    canvas.rect(x - 1.0, ground - trunk_height - 1.5, x + 1.0, ground, bark);
    let crown = (x, ground - trunk_height - crown_radius + 1.0);
    for side in [-1.0, 1.0] {
        canvas.circle(crown.0 + side * crown_radius * 0.65, crown.1 + crown_radius * 0.35, crown_radius * 0.7, green);
    }
    canvas.circle(crown.0, crown.1, crown_radius, green);
    let light = tone(green, 40);
    for _ in 0..3 {
        let angle = rng.range(0.0, std::f32::consts::TAU);
        let distance = rng.range(0.0, crown_radius * 0.6);
        canvas.put(
            (crown.0 + angle.cos() * distance).floor() as i32,
            (crown.1 + angle.sin() * distance).floor() as i32,
            light,
        );
    }
}

fn dog(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32, facing: f32) {
    let length = rng.range(9.5, 12.0);
    let coat = shade(rng, [172, 112, 62], 12);
    let dark = tone(coat, -80);
    let leg_height = length * 0.28;
    let (radius_x, radius_y) = (length * 0.34, length * 0.16);
    let body = (x - facing * length * 0.08, ground - leg_height - radius_y + 0.6);
    for offset in [-0.75, -0.4, 0.45, 0.8] {
        let leg_x = body.0 + facing * offset * radius_x;
        canvas.line((leg_x, body.1), (leg_x, ground - 0.6), 1.3, coat);
    }
    let tail_root = (body.0 - facing * radius_x * 0.9, body.1 - radius_y * 0.5);
    let tail_tip = (tail_root.0 - facing * rng.range(1.0, 2.2), tail_root.1 - rng.range(2.0, 3.2));
    canvas.line(tail_root, tail_tip, 1.2, coat);
    canvas.ellipse(body.0, body.1, radius_x, radius_y, coat);
    let head_radius = length * 0.15;
    let head = (body.0 + facing * (radius_x + head_radius * 0.2), body.1 - radius_y - head_radius * 0.5);
    canvas.circle(head.0, head.1, head_radius, coat);
    let snout = (head.0 + facing * head_radius * 1.1, head.1 + head_radius * 0.35);
    canvas.ellipse(snout.0, snout.1, head_radius * 0.8, head_radius * 0.5, coat);
    canvas.put((snout.0 + facing * head_radius * 0.6).floor() as i32, (snout.1 - 0.4).floor() as i32, [20, 16, 16]);
    canvas.ellipse(head.0 - facing * head_radius * 0.5, head.1 + 0.3, 0.9, head_radius * 0.9, dark);
    canvas.put((head.0 + facing * head_radius * 0.4).floor() as i32, (head.1 - 0.6).floor() as i32, [20, 16, 16]);
}

fn umbrella(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32) {
    let width = rng.range(9.5, 12.0);
    let canopy_colour = shade(rng, [214, 40, 152], 12);
    let handle = shade(rng, [44, 36, 44], 6);
    let hook_side = rng.sign();
    let canopy_base = ground - width * rng.range(0.5, 0.62);
    let canopy_height = width * 0.42;
    canvas.line((x, canopy_base - 1.0), (x, ground - 1.6), 1.2, handle);
    canvas.line((x, ground - 1.2), (x + hook_side * 1.2, ground - 0.5), 1.1, handle);
    canvas.line((x + hook_side * 1.2, ground - 0.5), (x + hook_side * 2.1, ground - 1.6), 1.1, handle);
    canvas.upper_half_ellipse(x, canopy_base, width / 2.0, canopy_height, canopy_colour);
    let rib = tone(canopy_colour, -60);
    for side in [-1.0, 1.0] {
        canvas.line((x, canopy_base - canopy_height + 0.5), (x + side * width * 0.22, canopy_base - 0.3), 0.9, rib);
    }
    canvas.put(x.floor() as i32, (canopy_base - canopy_height - 0.6).floor() as i32, handle);
}

fn book(canvas: &mut Canvas, rng: &mut Rng, x: f32, ground: f32, facing: f32) {
    let width = rng.range(6.0, 8.0);
    let height = rng.range(8.0, 10.5);
    let cover = shade(rng, [196, 36, 44], 12);
    let pages = shade(rng, [244, 240, 224], 6);
    let title = shade(rng, [236, 198, 60], 8);
    let (left, top) = (x - width / 2.0, ground - height);
    canvas.rect(left, top, left + width, ground, cover);
    // Page edges show on the side the book is turned to; the spine on the other.
    let (page_left, spine_left) = if facing > 0.0 { (left + width - 1.6, left) } else { (left, left + width - 1.0) };
    canvas.rect(page_left + 0.3, top + 0.8, page_left + 1.3, ground - 0.6, pages);
    canvas.rect(spine_left, top, spine_left + 1.0, ground, tone(cover, -70));
    let title_left = left + width * 0.3;
    canvas.rect(title_left, top + height * 0.25, title_left + width * 0.4, top + height * 0.25 + 1.0, title);
    canvas.rect(title_left, top + height * 0.45, title_left + width * 0.3, top + height * 0.45 + 1.0, title);
}
