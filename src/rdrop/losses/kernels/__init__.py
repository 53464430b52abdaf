"""The loss kernels: how the R-Drop sums and their gradients are computed when the plain
formula is not used. They take validated arguments (:mod:`rdrop.losses.checks`) and depend only on
the row math of :mod:`rdrop.losses._rows`, never on the public layer
(:mod:`rdrop.losses.functional`, :mod:`rdrop.losses.fused_linear`) that calls them.

* :mod:`.chunked`: the logits loss over row chunks, with closed-form gradients (eager);
* :mod:`.compiled`: the same per-chunk math as ``torch.compile``-d kernels, and when to use them;
* :mod:`.fused`: the output layer fused into the loss (hidden states in, no full logits).
"""
