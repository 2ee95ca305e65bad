"""File formats and their safe writing: atomic storage, feature files, alignment results,
fingerprints of inputs, the identity of model weights, and the published caption file."""
