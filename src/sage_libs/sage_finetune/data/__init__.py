"""The data path, one stage per module, each a pure function of its input:

records (``formats``) -> :class:`Conversation` (``conversation``) -> tokens with labels
(``render``) -> batches (``collate``); ``pipeline`` chains them for a whole dataset.
"""
