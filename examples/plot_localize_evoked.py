"""
Localise an evoked response
===========================

``us.apply`` takes an ``mne.Evoked`` and returns an ``mne.SourceEstimate`` on fsaverage,
with ``stc.solver_report`` saying which solver answered and whether the estimate is empty.
Here the evoked response is simulated on the default template and saved as MNE would.
"""

import mne

import unfolded_sbl as us
from unfolded_sbl.localize import format_report, peak_report
from unfolded_sbl.viz import plot_peak_map

fwd = us.load_forward()
data = us.simulate(fwd, 1, random_state=3, n_times=60)
info = mne.create_info(fwd.ch_names, 100.0, "eeg")
evoked = mne.EvokedArray(data.sensors[0], info, tmin=-0.1, nave=40, verbose=False)

stc, used = us.apply(evoked, "ClassicalCB", tmin=0.0, return_forward=True)
print(stc.solver_report)
peaks = peak_report(stc, used)
print(format_report(peaks))

# %%
# The map at the peak time and the peaks' time courses, as ``unfolded-sbl localize`` draws
# them:
fig = plot_peak_map(stc, used, peaks, title="simulated evoked, ClassicalCB,", units="A m")
