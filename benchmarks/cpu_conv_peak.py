"""What this CPU's oneDNN reaches on the wide ResNet-32's convolutions alone, against a matrix product.

    python benchmarks/cpu_conv_peak.py

A 2048 x 2048 matrix product (fp32, bf16), then each stage's 3x3 convolution of the wide ResNet-32 at batch 128
(64 channels at 32 x 32, 128 at 16 x 16, 256 at 8 x 8; channels-last): forward alone, forward and backward with
bf16 weights and inputs, and forward and backward under bf16 autocast with fp32 weights (glmc's training step).
TFLOP/s count 2 x MACs (the backward as twice the forward). Prints, never asserts.
"""
import time, torch
from glmc.provenance import measured_on
print(measured_on(), flush=True)
torch.manual_seed(0)
def rate(fn, flops, n=5):
    fn(); t=time.perf_counter()
    for _ in range(n): fn()
    return flops*n/(time.perf_counter()-t)/1e12
for dt in (torch.float32, torch.bfloat16):
    a=torch.randn(2048,2048,dtype=dt); b=torch.randn(2048,2048,dtype=dt)
    print("matmul", dt, f"{rate(lambda: a@b, 2*2048**3):.3f} TFLOP/s")
for c in (64,128,256):
    s = {64:32,128:16,256:8}[c]
    x=torch.randn(128,c,s,s).to(memory_format=torch.channels_last)
    conv=torch.nn.Conv2d(c,c,3,padding=1,bias=False).to(memory_format=torch.channels_last)
    fl=2*128*c*c*9*s*s
    for dt in (torch.float32, torch.bfloat16):
        xx=x.to(dt); cc=conv.to(dt)
        with torch.no_grad():
            f=rate(lambda: cc(xx), fl)
        xg=xx.clone().requires_grad_(True)
        y=cc(xg); g=torch.randn_like(y)
        def bwd():
            xg.grad=None; cc.weight.grad=None
            y=cc(xg); y.backward(g)
        fb=rate(bwd, 3*fl, n=3)
        # autocast path: fp32 weights
        conv32=conv
        def ac():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y=conv32(x.requires_grad_(True)); 
            y.float().sum().backward()
        fa=rate(ac, 3*fl, n=3) if dt==torch.bfloat16 else float('nan')
        print(f"conv c={c} {s}x{s} {dt}: fwd {f:.3f}  fwd+bwd {fb:.3f}  autocast fwd+bwd {fa:.3f} TFLOP/s")
