"""Byte encodings shared by several protocols."""
