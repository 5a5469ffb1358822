"""The recipe of Tandem's default model: draw the data, train the model, evaluate it.

The trained checkpoint ships in the runtime package (``tandem.default_model.CHECKPOINT``); this
package is the code that made it, run from a checkout:

    python -m recipes.default_model.train --out DIR      # the shipped weights, byte for byte
    python -m recipes.default_model.evaluate             # in-process vs through ``tandem up``
    python -m recipes.default_model.scenes out.png       # one picture of the kind it knows

``scenes`` draws the pictures, ``data`` asks the questions, ``model`` builds the untrained
model, tokenizer and processor, ``batch`` tokenises chats for training, ``probe`` is the
auxiliary vision loss, ``train`` fits it; ``evaluate`` scores a checkpoint, in-process and
through a running Tandem (``remote``, on ``tandem.client``; ``system`` starts one).
"""
