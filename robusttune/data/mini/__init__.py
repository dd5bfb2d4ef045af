"""The embedded mini benchmark: real digits on textures with a background shortcut in the ID data."""
