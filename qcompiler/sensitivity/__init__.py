"""Per-layer, per-format sensitivity scores (the ILP's objective) and whole-plan output KL.

``kl`` (:mod:`.kl`; forward only, ZeroQ-style)
    The KL divergence between the float model's output softmax and the output softmax when
    *only that layer* is quantized (weights X bits per-channel symmetric with the MSE-clipped
    scales of :mod:`qcompiler.quantize`, its input activation Y bits on the calibrated range's
    grid: exactly as InsertQDQ compiles it, :mod:`.layer_quant`), averaged over the first
    calibration samples, run in ONNX Runtime. This is the cost users feel, so it is organised
    to be cheap:

    * one float run of the whole model with every layer input exposed as an extra output (the
      "probe") gives the reference outputs (:mod:`.outputs`) and the input of every layer;
    * for each layer, a *suffix* model (:mod:`.suffix`) that starts at that layer (its inputs are
      the tensors live at that point) is run once per candidate, so the unchanged prefix is never
      recomputed (about half the network on average);
    * the layer's weight and quantized input are graph inputs of its suffix model, so candidates
      are swapped by feeding arrays, not by rebuilding sessions: one session per layer, reused
      for every candidate and batch.

``hessian`` (HAWQ-V2, needs torch): see :mod:`qcompiler.hessian`.

:mod:`.whole_plan` scores whole assignments the same way (bit assignment's baselines, the
Pareto sweep and the tests); :mod:`.samples` turns calibration data into batched feeds;
:mod:`.pruning` drops the runs that cannot change the ILP's answer.
"""
