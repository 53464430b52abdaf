"""The training wing: when R-Drop runs and how its passes are produced. It calls the losses
(:mod:`rdrop.losses`); the losses never call it.

* :mod:`.step`: the one training step (plan -> passes -> loss) every entry point runs;
  :mod:`.options`: its options, one frozen object whose ``validate`` holds every rule between them;
* :mod:`.schedule`: which optimizer steps run R-Drop, with what alpha; :mod:`.autostart`: the
  start rules (:class:`rdrop.AutoStart`, :class:`rdrop.PlateauStart`);
* :mod:`.batching`: the inputs duplicated along the batch and the outputs split back;
  :mod:`.subset`: the second pass on a subset of the rows;
* :mod:`.noise`: other randomness for models without dropout; :mod:`.inspection`: what dropout
  a model has;
* :mod:`.tryout`: does R-Drop pay on a finished run (:func:`rdrop.tryout`).
"""
