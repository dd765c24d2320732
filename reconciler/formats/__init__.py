"""One codec per DMS file: `parse(text)` and `render(...)` that round-trip.

Codecs are pure (text in, text out). `observe` reads files and hands their text to a codec;
`executor` writes what a codec rendered. Nothing here touches the disk.
"""
