"""Data: image-caption datasets (Hub, folder, the embedded offline set), uniqueness levels and
their caption sources, and image noise."""
