"""Trainers: one base (:mod:`.base`) and one small module per method."""
