"""
Simulate, solve and score
=========================

Simulate EEG from the embedded default head model (fsaverage ico3, BioSemi 64), solve it
with Champagne (``ClassicalCB``) and score the estimate against the true sources.
"""

import unfolded_sbl as us

fwd = us.load_forward()
data = us.simulate(fwd, 8, random_state=0)          # .sensors (8, 64, 100) in volts
est = us.ClassicalCB(forward=fwd, noise="learn", n_iter=25).fit()
sources = est.predict(data.sensors)                  # (8, 1284, 100) in A m
print(f"rMSE {us.rmse(data.sources, sources):.3f}, F1 {us.f1(data.sources, sources):.3f}, "
      f"EMD {1e3 * us.emd(data.sources, sources, fwd.positions):.1f} mm")

# %%
# The truth and the estimate of the first sample on the cortex (temporal RMS):
from unfolded_sbl.metrics import rms_map

fig = us.plot_source_maps([rms_map(data.sources[0]), rms_map(sources[0])], fwd,
                          titles=["truth", "ClassicalCB"])
