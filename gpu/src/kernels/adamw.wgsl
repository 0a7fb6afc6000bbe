// AdamW with decoupled weight decay and gradient clipping by a global norm computed on the GPU
// (sum_of_squares[0] = Σ g² over every trained tensor, so no read-back is needed).

struct Params {
    len: u32, pad0: u32, pad1: u32, pad2: u32,
    lr: f32, beta1: f32, beta2: f32, eps: f32,
    weight_decay: f32, max_grad_norm: f32, correction1: f32, correction2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> sum_of_squares: array<f32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 256u;
    if (i >= p.len) { return; }
    let norm = sqrt(sum_of_squares[0]);
    var clip = 1.0;
    if (p.max_grad_norm > 0.0 && norm > p.max_grad_norm) { clip = p.max_grad_norm / (norm + 1e-6); }
    let g = grad[i] * clip;
    let m_new = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let v_new = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = m_new;
    v[i] = v_new;
    let m_hat = m_new / p.correction1;
    let v_hat = v_new / p.correction2;
    param[i] -= p.lr * (m_hat / (sqrt(v_hat) + p.eps) + p.weight_decay * param[i]);
}
