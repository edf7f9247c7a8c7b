"""Where a run's model comes from: model folders and adapters checked before anything loads
(:mod:`.files`, which also decides whether a base is a GGUF file), GGUF files converted once into a
trainable folder (:mod:`.gguf`), and the one place that calls ``from_pretrained`` (:mod:`.loading`).
Where a trained model goes: :mod:`..export`."""
