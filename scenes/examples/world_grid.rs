//! Saves a grid of renders of the reference world as a PNG, to look at by eye.
//!
//! ```sh
//! cargo run -p scenes --example world_grid -- world.png
//! ```
//!
//! Rows: one per group. Columns: each setting without an object, then each concept (settings
//! cycling), so every group meets every concept once.

use scenes::{Concept, Group, Scene, Setting, grid_png, render};

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "world.png".into());
    let seed_base: u64 = std::env::args().nth(2).and_then(|text| text.parse().ok()).unwrap_or(1);
    let mut images = Vec::new();
    for (row, &group) in Group::ALL.iter().enumerate() {
        for (column, &setting) in Setting::ALL.iter().enumerate() {
            let seed = seed_base * 1000 + (row * 100 + column) as u64;
            images.push(render(&Scene { group, concept: None, setting }, seed));
        }
        for (column, &concept) in Concept::ALL.iter().enumerate() {
            let setting = Setting::ALL[(column + row) % Setting::ALL.len()];
            let seed = seed_base * 1000 + (row * 100 + 50 + column) as u64;
            images.push(render(&Scene { group, concept: Some(concept), setting }, seed));
        }
    }
    let columns = Setting::ALL.len() + Concept::ALL.len();
    std::fs::write(&path, grid_png(&images, columns, 4)).expect("write the grid");
    println!("wrote {path}: {} rows × {columns} columns", Group::ALL.len());
}
