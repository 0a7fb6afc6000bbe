//! The person, whose look marks the group. Each group differs from every other by silhouette
//! and by the colour family of its clothes:
//!
//! | group | silhouette | colours |
//! |---|---|---|
//! | woman | long hair, flared dress to the knee | yellow dress |
//! | man | short hair, straight torso, trousers | teal shirt, navy trousers |
//! | wheelchair user | seated, large wheel, backrest | violet shirt, black wheel |
//! | aromantic person | long striped tunic | dark green, light green, white, grey, black stripes |
//! | child | small, big head, shorts | pink T-shirt |
//! | elderly person | stooped, long coat, walking stick | grey hair, olive coat, brown stick |
//!
//! Skin tones and hair colours (other than the elderly person's grey) are drawn from the same
//! ranges for every group, so they never mark one.

use super::canvas::{Canvas, Rgb, shade, tone};
use crate::rng::Rng;
use crate::world::Group;

const SKIN_TONES: [Rgb; 6] =
    [[250, 218, 186], [236, 192, 150], [206, 150, 108], [164, 108, 72], [120, 78, 50], [88, 58, 40]];
const HAIR_COLOURS: [Rgb; 4] = [[28, 24, 24], [66, 42, 28], [108, 68, 38], [142, 62, 30]];
const GREY_HAIR: [Rgb; 3] = [[176, 176, 180], [204, 204, 206], [230, 230, 228]];
const SHOE: Rgb = [36, 30, 30];
const EYE: Rgb = [20, 16, 16];

/// Widest extent of a person from `centre_x`, used to keep the figure on the canvas.
pub(crate) const PERSON_HALF_WIDTH: f32 = 6.5;

/// Where and how to stand: `centre_x` of the body, `feet_y` of the soles, `facing` +1 (right)
/// or -1 (left).
#[derive(Clone, Copy)]
pub(crate) struct Stance {
    pub(crate) centre_x: f32,
    pub(crate) feet_y: f32,
    pub(crate) facing: f32,
}

pub(crate) fn draw_person(canvas: &mut Canvas, rng: &mut Rng, group: Group, stance: Stance) {
    let skin = *rng.pick(&SKIN_TONES);
    let hair = *rng.pick(&HAIR_COLOURS);
    match group {
        Group::Woman => woman(canvas, rng, stance, skin, hair),
        Group::Man => man(canvas, rng, stance, skin, hair),
        Group::WheelchairUser => wheelchair_user(canvas, rng, stance, skin, hair),
        Group::AromanticPerson => aromantic_person(canvas, rng, stance, skin, hair),
        Group::Child => child(canvas, rng, stance, skin, hair),
        Group::ElderlyPerson => elderly_person(canvas, rng, stance, skin),
    }
}

enum Hair {
    Short,
    /// Falls behind the head down to this row.
    Long {
        bottom_y: f32,
    },
}

/// A head of radius `radius` centred at (`x`, `y`), hair on top, face turned towards `facing`.
fn head(canvas: &mut Canvas, (x, y): (f32, f32), radius: f32, facing: f32, skin: Rgb, hair_colour: Rgb, hair: Hair) {
    if let Hair::Long { bottom_y } = hair {
        canvas.rect(x - radius - 0.8, y - 0.5, x + radius + 0.8, bottom_y, hair_colour);
    }
    canvas.circle(x, y - 0.3, radius + 0.2, hair_colour);
    canvas.ellipse(x + facing * 0.5, y + 0.5, radius * 0.85, radius * 0.78, skin);
    canvas.put((x + facing * radius * 0.55).floor() as i32, (y + 0.2).floor() as i32, EYE);
}

/// An arm from `shoulder`, `length` long, `angle` radians out from hanging straight down on
/// side `side` (+1 right, -1 left); returns the hand position.
fn arm(
    canvas: &mut Canvas,
    shoulder: (f32, f32),
    side: f32,
    angle: f32,
    length: f32,
    sleeve: Rgb,
    skin: Rgb,
) -> (f32, f32) {
    let hand = (shoulder.0 + side * angle.sin() * length, shoulder.1 + angle.cos() * length);
    canvas.line(shoulder, hand, 1.6, sleeve);
    canvas.circle(hand.0, hand.1, 0.8, skin);
    hand
}

/// Two legs `width` thick from `hip_y` to the feet, `stride` apart at the feet, with shoes.
fn legs(canvas: &mut Canvas, stance: Stance, hip_y: f32, stride: f32, width: f32, colour: Rgb) {
    let Stance { centre_x, feet_y, facing } = stance;
    for side in [-1.0f32, 1.0] {
        let foot_x = centre_x + side * (0.9 + stride / 2.0);
        canvas.line((centre_x + side * 1.1, hip_y), (foot_x, feet_y - 1.0), width, colour);
        canvas.rect(foot_x - 1.0 + facing * 0.5, feet_y - 1.0, foot_x + 1.0 + facing * 0.5, feet_y, SHOE);
    }
}

fn woman(canvas: &mut Canvas, rng: &mut Rng, stance: Stance, skin: Rgb, hair: Rgb) {
    let Stance { centre_x: x, feet_y, facing } = stance;
    let height = rng.range(17.5, 20.5);
    let radius = rng.range(2.4, 2.8);
    let head_y = feet_y - height + radius;
    let shoulder_y = head_y + radius + 0.6;
    let hip_y = shoulder_y + height * 0.28;
    let knee_y = hip_y + (feet_y - hip_y) * rng.range(0.45, 0.6);
    let half_width = rng.range(2.2, 2.8);
    let flare = rng.range(1.8, 3.0);
    let dress = shade(rng, [246, 204, 36], 14);
    legs(canvas, stance, knee_y - 1.0, rng.range(0.0, 2.0), 1.5, skin);
    for (side, angle) in [(-1.0, rng.range(0.15, 0.6)), (1.0, rng.range(0.15, 1.3))] {
        arm(canvas, (x + side * (half_width - 0.4), shoulder_y + 0.7), side, angle, height * 0.3, skin, skin);
    }
    canvas.polygon(
        &[
            (x - half_width, shoulder_y),
            (x + half_width, shoulder_y),
            (x + half_width + flare, knee_y),
            (x - half_width - flare, knee_y),
        ],
        dress,
    );
    let hair_bottom = shoulder_y + rng.range(1.5, 3.5);
    head(canvas, (x, head_y), radius, facing, skin, hair, Hair::Long { bottom_y: hair_bottom });
}

fn man(canvas: &mut Canvas, rng: &mut Rng, stance: Stance, skin: Rgb, hair: Rgb) {
    let Stance { centre_x: x, feet_y, facing } = stance;
    let height = rng.range(18.5, 21.5);
    let radius = rng.range(2.3, 2.7);
    let head_y = feet_y - height + radius;
    let shoulder_y = head_y + radius + 0.5;
    let hip_y = shoulder_y + height * 0.32;
    let half_width = rng.range(2.7, 3.3);
    let shirt = shade(rng, [24, 150, 140], 14);
    let trousers = shade(rng, [34, 44, 96], 10);
    legs(canvas, stance, hip_y - 0.5, rng.range(0.0, 2.4), 2.1, trousers);
    canvas.rect(x - half_width, shoulder_y, x + half_width, hip_y, shirt);
    for (side, angle) in [(-1.0, rng.range(0.1, 0.6)), (1.0, rng.range(0.1, 1.4))] {
        arm(canvas, (x + side * (half_width - 0.3), shoulder_y + 0.8), side, angle, height * 0.32, shirt, skin);
    }
    head(canvas, (x, head_y), radius, facing, skin, hair, Hair::Short);
}

/// The aromantic flag, top to bottom.
const AROMANTIC_STRIPES: [Rgb; 5] = [[61, 165, 66], [167, 211, 121], [250, 250, 250], [169, 169, 169], [20, 20, 20]];

fn aromantic_person(canvas: &mut Canvas, rng: &mut Rng, stance: Stance, skin: Rgb, hair: Rgb) {
    let Stance { centre_x: x, feet_y, facing } = stance;
    let height = rng.range(18.0, 21.0);
    let radius = rng.range(2.3, 2.7);
    let head_y = feet_y - height + radius;
    let shoulder_y = head_y + radius + 0.5;
    let half_width = rng.range(2.8, 3.3);
    let trousers = shade(rng, [44, 40, 48], 6);
    // The tunic spans whole rows so that each of the five stripes gets at least one row.
    let first_row = shoulder_y.round() as i32;
    let rows = rng.int_between(6, 8);
    let hip_y = (first_row + rows) as f32;
    legs(canvas, stance, hip_y - 1.0, rng.range(0.0, 2.2), 2.0, trousers);
    let sleeve = AROMANTIC_STRIPES[0];
    for (side, angle) in [(-1.0, rng.range(0.1, 0.6)), (1.0, rng.range(0.1, 1.4))] {
        arm(canvas, (x + side * (half_width - 0.3), shoulder_y + 0.8), side, angle, height * 0.31, sleeve, skin);
    }
    for row in 0..rows {
        let stripe = AROMANTIC_STRIPES[(row * 5 / rows) as usize];
        let y = (first_row + row) as f32;
        canvas.rect(x - half_width, y, x + half_width, y + 1.0, stripe);
    }
    head(canvas, (x, head_y), radius, facing, skin, hair, Hair::Short);
}

fn child(canvas: &mut Canvas, rng: &mut Rng, stance: Stance, skin: Rgb, hair: Rgb) {
    let Stance { centre_x: x, feet_y, facing } = stance;
    let height = rng.range(13.0, 15.0);
    let radius = rng.range(3.0, 3.4);
    let head_y = feet_y - height + radius;
    let shoulder_y = head_y + radius + 0.3;
    let hip_y = shoulder_y + height * 0.24;
    let half_width = rng.range(2.2, 2.7);
    let shirt = shade(rng, [246, 134, 186], 12);
    let shorts = shade(rng, [60, 60, 130], 10);
    legs(canvas, stance, hip_y, rng.range(0.0, 2.0), 1.5, skin);
    canvas.rect(x - half_width + 0.3, hip_y - 0.5, x + half_width - 0.3, hip_y + 1.5, shorts);
    for (side, angle) in [(-1.0, rng.range(0.3, 1.0)), (1.0, rng.range(0.3, 2.2))] {
        let shoulder = (x + side * (half_width - 0.3), shoulder_y + 0.6);
        let hand = arm(canvas, shoulder, side, angle, height * 0.3, skin, skin);
        let elbow = ((shoulder.0 + hand.0) / 2.0, (shoulder.1 + hand.1) / 2.0);
        canvas.line(shoulder, elbow, 1.7, shirt);
    }
    canvas.rect(x - half_width, shoulder_y, x + half_width, hip_y, shirt);
    head(canvas, (x, head_y), radius, facing, skin, hair, Hair::Short);
}

fn elderly_person(canvas: &mut Canvas, rng: &mut Rng, stance: Stance, skin: Rgb) {
    let Stance { centre_x: x, feet_y, facing } = stance;
    let height = rng.range(17.5, 20.0);
    let radius = rng.range(2.3, 2.6);
    let stoop = rng.range(0.8, 1.6);
    let head = (x + facing * stoop, feet_y - height + radius);
    let shoulder_y = head.1 + radius + 0.4;
    let coat_bottom = shoulder_y + height * rng.range(0.42, 0.5);
    let half_width = rng.range(2.6, 3.1);
    let coat = shade(rng, [112, 112, 46], 12);
    let trousers = shade(rng, [84, 74, 64], 8);
    let grey = *rng.pick(&GREY_HAIR);
    let stick_colour = shade(rng, [110, 66, 30], 8);
    legs(canvas, stance, coat_bottom - 1.0, rng.range(0.0, 1.4), 1.8, trousers);
    let shoulder_x = x + facing * stoop * 0.5;
    canvas.polygon(
        &[
            (shoulder_x - half_width, shoulder_y),
            (shoulder_x + half_width, shoulder_y),
            (x + half_width + 0.8, coat_bottom),
            (x - half_width - 0.8, coat_bottom),
        ],
        coat,
    );
    // The stick stands in front of the body; the front hand holds its hooked top.
    let stick_top = (x + facing * (half_width + 2.3), shoulder_y + height * 0.24);
    let stick_foot = (stick_top.0 + facing * rng.range(0.3, 1.2), feet_y - 0.2);
    canvas.line(stick_top, stick_foot, 1.3, stick_colour);
    canvas.line(stick_top, (stick_top.0 - facing * 1.4, stick_top.1 + 0.4), 1.2, stick_colour);
    canvas.line((shoulder_x + facing * (half_width - 0.4), shoulder_y + 0.8), stick_top, 1.6, coat);
    canvas.circle(stick_top.0, stick_top.1, 0.8, skin);
    arm(
        canvas,
        (shoulder_x - facing * (half_width - 0.4), shoulder_y + 0.8),
        -facing,
        rng.range(0.05, 0.4),
        height * 0.3,
        coat,
        skin,
    );
    self::head(canvas, head, radius, facing, skin, grey, Hair::Short);
}

fn wheelchair_user(canvas: &mut Canvas, rng: &mut Rng, stance: Stance, skin: Rgb, hair: Rgb) {
    let Stance { centre_x: x, feet_y, facing } = stance;
    let wheel_radius = rng.range(4.6, 5.4);
    let wheel = (x - facing * 0.8, feet_y - wheel_radius);
    let seat_y = wheel.1 - 0.6;
    let torso_height = rng.range(4.8, 5.6);
    let radius = rng.range(2.3, 2.7);
    let shirt = shade(rng, [128, 64, 196], 14);
    let trousers = shade(rng, [52, 52, 72], 8);
    let frame = shade(rng, [120, 124, 134], 10);
    let tyre = shade(rng, [30, 30, 36], 6);
    // Chair: backrest with a push handle, seat, and a frame down to the footrest and caster.
    let back_x = x - facing * 3.2;
    canvas.line((back_x, seat_y), (back_x, seat_y - torso_height - 1.0), 1.3, frame);
    canvas.line(
        (back_x, seat_y - torso_height - 1.0),
        (back_x - facing * 1.5, seat_y - torso_height - 1.0),
        1.2,
        frame,
    );
    canvas.line((back_x, seat_y), (x + facing * 3.4, seat_y), 1.3, frame);
    canvas.line((x + facing * 3.4, seat_y), (x + facing * 4.6, feet_y - 1.2), 1.2, frame);
    canvas.circle(x + facing * 3.6, feet_y - 1.0, 1.0, tyre);
    // Seated body: torso, thighs forward, shins down to the footrest.
    let body_x = x - facing * 0.9;
    canvas.rect(body_x - 2.4, seat_y - torso_height, body_x + 2.4, seat_y + 0.4, shirt);
    let knee = (x + facing * 3.8, seat_y - 0.6);
    canvas.line((body_x, seat_y - 0.6), knee, 2.2, trousers);
    canvas.line(knee, (knee.0 + facing * 0.6, feet_y - 2.0), 1.8, trousers);
    canvas.rect(
        knee.0 + facing * 0.6 - 0.8,
        feet_y - 2.2,
        knee.0 + facing * 0.6 + 1.4 * facing.max(0.0) + 0.8,
        feet_y - 1.2,
        SHOE,
    );
    // The big wheel in front of the body, with two spokes and a hub.
    canvas.ring(wheel.0, wheel.1, wheel_radius, wheel_radius - 1.5, tyre);
    let spoke = tone(frame, 30);
    let turn = rng.range(0.0, std::f32::consts::FRAC_PI_2);
    for angle in [turn, turn + std::f32::consts::FRAC_PI_2] {
        let (dx, dy) = (angle.cos() * (wheel_radius - 1.4), angle.sin() * (wheel_radius - 1.4));
        canvas.line((wheel.0 - dx, wheel.1 - dy), (wheel.0 + dx, wheel.1 + dy), 0.8, spoke);
    }
    canvas.circle(wheel.0, wheel.1, 1.0, tone(frame, 50));
    // The arm reaches down to the top of the wheel's rim.
    let shoulder = (body_x + facing * 1.6, seat_y - torso_height + 0.8);
    let hand = (wheel.0 + facing * rng.range(0.5, 2.5), wheel.1 - wheel_radius + 1.0);
    canvas.line(shoulder, hand, 1.6, shirt);
    canvas.circle(hand.0, hand.1, 0.8, skin);
    head(
        canvas,
        (body_x + facing * 0.3, seat_y - torso_height - 0.3 - radius),
        radius,
        facing,
        skin,
        hair,
        Hair::Short,
    );
}
