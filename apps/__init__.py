"""The seed project's two apps on the MobileDL pipeline.

* `apps.style_transfer`: a feed-forward style-transfer network (Johnson et al. 2016) that
  paints a photo in the style of Van Gogh's *Starry Night* in one pass;
* `apps.poem`: a character-level LSTM that writes Tang-style quatrains from a first character.

Both ship small trained weights (and the scripts that trained them) and run through
`mdl_tvm.compile` on this machine or on the (emulated) phone: ``mdl-tvm app style`` and
``mdl-tvm app poem``.
"""
