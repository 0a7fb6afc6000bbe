// Prepended to the kernels that reduce over a workgroup (rows, image_norm): a tree sum in
// workgroup memory over WG invocations (a power of two the including file declares); every
// invocation gets the total.

var<workgroup> scratch: array<f32, WG>;

fn reduce_sum(value: f32, lane: u32) -> f32 {
    scratch[lane] = value;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (lane < step) { scratch[lane] += scratch[lane + step]; }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

