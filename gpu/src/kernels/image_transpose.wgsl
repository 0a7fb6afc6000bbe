// Batched transpose of row-major `rows × cols` matrices through a 16×16 tile in workgroup memory
// (reads and writes both run along memory). Tiles are numbered over (matrix, tile row, tile
// column) and spread over a 2-D grid of workgroups, so any number of them fits the dispatch
// limits.

struct Params { tiles: u32, rows: u32, cols: u32, tile_rows: u32, tile_cols: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const TILE: u32 = 16u;
// One column of padding keeps the transposed reads off a single memory bank.
var<workgroup> tile: array<array<f32, 17>, 16>;

@compute @workgroup_size(16, 16, 1)
fn transpose(@builtin(workgroup_id) workgroup: vec3<u32>, @builtin(num_workgroups) workgroups: vec3<u32>,
             @builtin(local_invocation_id) local: vec3<u32>) {
    let index = workgroup.x + workgroup.y * workgroups.x;
    if (index >= p.tiles) { return; }
    let tile_col = index % p.tile_cols;
    let tile_row = (index / p.tile_cols) % p.tile_rows;
    let matrix = index / (p.tile_cols * p.tile_rows);
    let base = matrix * p.rows * p.cols;
    let row = tile_row * TILE + local.y;
    let col = tile_col * TILE + local.x;
    if (row < p.rows && col < p.cols) {
        tile[local.y][local.x] = x[base + row * p.cols + col];
    }
    workgroupBarrier();
    // This invocation writes y[col'][row'] = x[row'][col'] with row' along x (contiguous in y).
    let out_col = tile_col * TILE + local.y;
    let out_row = tile_row * TILE + local.x;
    if (out_row < p.rows && out_col < p.cols) {
        y[base + out_col * p.rows + out_row] = tile[local.x][local.y];
    }
}
