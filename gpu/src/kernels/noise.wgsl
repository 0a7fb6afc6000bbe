// Counter-based Gaussian noise with identical bits on every backend.
//
// Element i of a stream is a function of (seed, i) only: 32 bits from a keyed integer hash (a
// bijection of i for a fixed key), turned into a standard normal by an integer-only inverse CDF:
// the top bit is the sign, the count of leading ones of the rest picks an octave of the tail
// probability, the next 8 bits a cell of a 257-entry table of that octave and the 8 after that
// interpolate linearly between cells. The table (Q16 fixed point) is computed once on the host and
// uploaded, and all arithmetic here is integer until one exact conversion, so the CPU reference
// (noise.rs) produces the same bits. Float transcendental functions are not used because GPUs
// compute them approximately and differently.

struct Params {
    len: u32, key0: u32, key1: u32, offset: u32,
    scale: f32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn lowbias32(input: u32) -> u32 {
    var x = input;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn hash(index: u32) -> u32 {
    var h = lowbias32(index ^ p.key0);
    h = lowbias32(h + p.key1);
    return lowbias32(h ^ 0x5bd1e995u);
}

const CELLS: u32 = 256u;
const OCTAVES: u32 = 24u;

fn gaussian(bits: u32) -> f32 {
    let negative = (bits >> 31u) != 0u;
    let complement = ~(bits << 1u); // low bit is always 1, so never zero
    let octave = min(countLeadingZeros(complement), OCTAVES - 1u);
    let rest = complement << (octave + 1u);
    let cell = rest >> 24u;
    let fraction = i32((rest >> 16u) & 255u);
    let base = octave * (CELLS + 1u) + cell;
    let low = table[base];
    let high = table[base + 1u];
    let fixed = low + (((high - low) * fraction) >> 8u);
    let magnitude = f32(fixed) * (1.0 / 65536.0);
    return select(magnitude, -magnitude, negative);
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 256u;
    if (i < p.len) {
        out[i] = p.scale * gaussian(hash(p.offset + i));
    }
}
