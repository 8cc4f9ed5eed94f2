"""
Compare the shipped models with ClassicalCB
===========================================

Each shipped model comes with a card: the distribution it was trained on, its typical
gain over ClassicalCB and where it loses. Here two of them run through onnxruntime on the
same simulated samples as ClassicalCB.
"""

import unfolded_sbl as us

for row in us.list_pretrained(details=True):
    print(f"{row['name']}: median ratio to ClassicalCB {row['median_ratio']}, "
          f"loses on {sorted(row['loses']) or 'nothing'}")

# %%
fwd = us.load_forward()
data = us.simulate(fwd, 16, random_state=7)
classical = us.ClassicalCB(forward=fwd).fit().predict(data.sensors)
reference = us.rmse(data.sources, classical)
for name in ("deep-cb-joint", "deep-graph-cb-joint"):
    est = us.load_pretrained(name, forward=fwd, backend="onnx")
    ratio = us.rmse(data.sources, est.predict(data.sensors)) / reference
    print(f"{name}: rMSE {ratio:.3f}x ClassicalCB's on these 16 samples")
