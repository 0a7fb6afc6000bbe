// The statistics of one normalisation group, shared by image_norm.wgsl and
// image_backward_norm.wgsl so that the backward pass recomputes exactly what the forward used:
// sums of x − x[base] (a large common offset, activations far from zero, costs no precision), two
// passes over the group (the mean, then the mean of (x − mean)²) through `reduce_sum`.
// Uses the including kernel's `x` binding and its params `p` (`group_len`, `eps`); the value i of
// the group normalises to ((x[base + i] − shift) − mean) · rstd.

struct GroupStats { shift: f32, mean: f32, rstd: f32 }

fn group_stats(base: u32, lane: u32) -> GroupStats {
    let n = f32(p.group_len);
    let shift = x[base];
    var sum = 0.0;
    for (var i = lane; i < p.group_len; i += WG) { sum += x[base + i] - shift; }
    let mean = reduce_sum(sum, lane) / n; // of x − shift
    var squares = 0.0;
    for (var i = lane; i < p.group_len; i += WG) {
        let d = (x[base + i] - shift) - mean;
        squares += d * d;
    }
    return GroupStats(shift, mean, 1.0 / sqrt(reduce_sum(squares, lane) / n + p.eps));
}
