"""A local stand-in for Workers AI, named in wrangler.toml's ``[ai] implementation``: it "describes" a PNG from
its header, so the pipeline runs offline and its tests are deterministic. Not part of the deployed Worker."""

import struct


class PngDescriber:
    async def run(self, model, inputs, options=None):
        data = bytes(inputs["image"])
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            return {"description": "not a PNG image"}
        width, height = struct.unpack(">II", data[16:24])
        return {"description": f"a {width}x{height} PNG image", "model": model}
