"""A Tang quatrain generator: character-level LSTM, compiled one step at a time.

>>> from apps.poem import write_poem, PoemOptions
>>> print(write_poem("春", PoemOptions(seed=1)))
"""

from apps.poem.generate import PoemOptions, compose, vocabulary, write_poem, write_poem_eager
from apps.poem.model import CharLSTM, LSTMStep, load_model

__all__ = ["PoemOptions", "compose", "vocabulary", "write_poem", "write_poem_eager", "CharLSTM",
           "LSTMStep", "load_model"]
