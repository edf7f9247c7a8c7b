"""Dataset loaders: read records from a source (``load``/``stream``) and tokenize them
(``preprocess``). Registered by name in :mod:`sage_libs.sage_finetune.registry`."""
