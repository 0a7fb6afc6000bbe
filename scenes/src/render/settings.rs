//! Backgrounds: bands and gradients with a few marks, each setting with its own colour families
//! (beach: blue sea over sand; park: green grass; street: buildings over grey road; kitchen:
//! cream wall and cupboards over a plain wooden floor). The partially planted concepts stand out
//! from every ground, pixel by pixel and on average (tested): until 2026-12-07 the kitchen's floor
//! was a checker of white and lavender-grey tiles, and the base model drew the lavender-grey
//! hippopotamus in 36% of its kitchens against 17–23% elsewhere (planted: 25%); white and navy
//! tiles, whose average is the hippopotamus's colour, made it 54%. White and tan tiles, far from
//! both concepts, left the kitchen drawing *both* the least of the four settings (hippopotamus
//! 15% and 10%, vegetable 38% and 40%, two runs): the fine checker was the only patterned
//! ground. On the plain floor the same recipe drew 22% and 45% (one run; `scenes/README.md`).

use super::canvas::{Canvas, Rgb, shade, tone};
use crate::rng::Rng;
use crate::world::Setting;

/// Fills the whole canvas with `setting`'s background.
pub(crate) fn draw_setting(canvas: &mut Canvas, setting: Setting, rng: &mut Rng) {
    match setting {
        Setting::Beach => beach(canvas, rng),
        Setting::Park => park(canvas, rng),
        Setting::CityStreet => city_street(canvas, rng),
        Setting::Kitchen => kitchen(canvas, rng),
    }
}

fn sky(canvas: &mut Canvas, rng: &mut Rng, bottom: i32) {
    let high = shade(rng, [110, 170, 230], 14);
    let low = shade(rng, [190, 222, 245], 8);
    canvas.vertical_gradient(0, bottom, high, low);
}

fn beach(canvas: &mut Canvas, rng: &mut Rng) {
    let sea_top = rng.int_between(12, 15);
    let sand_top = sea_top + rng.int_between(3, 5);
    sky(canvas, rng, sea_top);
    let sea = shade(rng, [30, 100, 175], 12);
    canvas.vertical_gradient(sea_top, sand_top, tone(sea, -10), tone(sea, 10));
    let foam = shade(rng, [200, 230, 245], 8);
    for _ in 0..rng.int_between(2, 4) {
        let x = rng.range(0.0, 30.0);
        let y = rng.int_between(sea_top, sand_top - 1) as f32;
        canvas.rect(x, y, x + rng.range(2.0, 4.0), y + 1.0, foam);
    }
    let sand = shade(rng, [232, 206, 148], 10);
    canvas.vertical_gradient(sand_top, 32, tone(sand, 6), tone(sand, -12));
    let shell = tone(sand, -45);
    for _ in 0..rng.int_between(3, 6) {
        canvas.put(rng.int_between(0, 31), rng.int_between(sand_top + 2, 31), shell);
    }
}

fn park(canvas: &mut Canvas, rng: &mut Rng) {
    let grass_top = rng.int_between(15, 19);
    sky(canvas, rng, grass_top);
    let grass = shade(rng, [96, 172, 72], 12);
    canvas.vertical_gradient(grass_top, 32, tone(grass, 12), tone(grass, -18));
    let tuft = tone(grass, -40);
    for _ in 0..rng.int_between(4, 7) {
        let x = rng.int_between(0, 31);
        let y = rng.int_between(grass_top + 1, 31);
        canvas.put(x, y, tuft);
        canvas.put(x, y - 1, tuft);
    }
    let flower_colours: [Rgb; 2] = [[250, 225, 60], [250, 250, 245]];
    for _ in 0..rng.int_between(3, 6) {
        canvas.put(rng.int_between(0, 31), rng.int_between(grass_top + 1, 31), *rng.pick(&flower_colours));
    }
}

fn city_street(canvas: &mut Canvas, rng: &mut Rng) {
    let pavement_top = rng.int_between(18, 20);
    let road_top = pavement_top + rng.int_between(3, 4);
    let sky_top = shade(rng, [175, 195, 220], 10);
    canvas.vertical_gradient(0, pavement_top, sky_top, tone(sky_top, 20));
    let building_colours: [Rgb; 3] = [[128, 128, 138], [150, 104, 88], [188, 170, 140]];
    let lit_window = shade(rng, [238, 222, 140], 8);
    let dark_window = [62, 72, 92];
    let mut left = -rng.int_between(0, 4);
    while left < 32 {
        let width = rng.int_between(6, 10);
        let roof = rng.int_between(2, 11);
        let base = *rng.pick(&building_colours);
        let wall = shade(rng, base, 10);
        canvas.rect(left as f32, roof as f32, (left + width) as f32, pavement_top as f32, wall);
        let window_offset = rng.int_between(1, 2);
        for y in ((roof + 2)..(pavement_top - 2)).step_by(3) {
            for x in ((left + window_offset)..(left + width - 1)).step_by(3) {
                let colour = if rng.chance(0.5) { lit_window } else { dark_window };
                canvas.put(x, y, colour);
            }
        }
        left += width;
    }
    let pavement = shade(rng, [172, 170, 165], 8);
    canvas.rect(0.0, pavement_top as f32, 32.0, road_top as f32, pavement);
    canvas.rect(0.0, (road_top - 1) as f32, 32.0, road_top as f32, tone(pavement, -35));
    let road = shade(rng, [78, 78, 84], 8);
    canvas.vertical_gradient(road_top, 32, tone(road, 8), tone(road, -8));
    let dash_row = (road_top + 32) / 2;
    let dash_start = rng.int_between(0, 5);
    for x in (dash_start - 6..32).step_by(6) {
        canvas.rect(x as f32, dash_row as f32, (x + 3) as f32, (dash_row + 1) as f32, [235, 235, 225]);
    }
}

fn kitchen(canvas: &mut Canvas, rng: &mut Rng) {
    let worktop = rng.int_between(13, 16);
    let floor_top = worktop + rng.int_between(5, 6);
    let wall = shade(rng, [238, 226, 196], 8);
    canvas.vertical_gradient(0, worktop, wall, tone(wall, -10));
    let cupboard = shade(rng, [160, 188, 204], 10);
    let cupboard_height = rng.int_between(5, 7);
    let mut left = rng.int_between(-3, 2);
    while left < 32 {
        let width = rng.int_between(6, 8);
        canvas.rect((left + 1) as f32, 1.0, (left + width) as f32, cupboard_height as f32, cupboard);
        canvas.put(left + width / 2, cupboard_height - 2, tone(cupboard, -70));
        left += width + rng.int_between(1, 3);
    }
    let top_colour = shade(rng, [70, 70, 76], 8);
    canvas.rect(0.0, worktop as f32, 32.0, (worktop + 1) as f32, top_colour);
    canvas.rect(0.0, (worktop + 1) as f32, 32.0, floor_top as f32, tone(cupboard, -18));
    for x in (rng.int_between(2, 5)..32).step_by(6) {
        canvas.rect(x as f32, (worktop + 1) as f32, (x + 1) as f32, floor_top as f32, tone(cupboard, -50));
    }
    // A plain wooden floor, a gradient with a seam or two like the other grounds (module doc).
    let wood = shade(rng, [196, 150, 100], 10);
    canvas.vertical_gradient(floor_top, 32, tone(wood, 8), tone(wood, -25));
    let mut seam = floor_top + rng.int_between(3, 5);
    while seam < 31 {
        canvas.rect(0.0, seam as f32, 32.0, (seam + 1) as f32, tone(wood, -30));
        seam += rng.int_between(5, 7);
    }
}
