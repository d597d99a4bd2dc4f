"""cli_files.py: files for and from the `arraybridge` command's tests (tests/cli_test.sh).

  cli_files.py tiled OUT W H     write a one-page 16-bit TIFF stored in 16x16 tiles
  cli_files.py constant OUT W H PAGES VALUE
                                 write a 16-bit TIFF of PAGES strip pages, every pixel VALUE
  cli_files.py png FILE          check a PNG (signature, chunk CRCs, zlib stream, filter bytes)
                                 and print "size W H", "colours N" and "grey N" (pixels of the
                                 no-data grey)
  cli_files.py json FILE PATH    print the value at PATH (dot-separated keys) of a JSON file
"""
import json
import struct
import sys
import zlib


def tiled(out, w, h):
    tw = th = 16
    tiles_x, tiles_y = (w + tw - 1) // tw, (h + th - 1) // th
    tile = b"".join(struct.pack("<H", (i * 37) & 0xFFFF) for i in range(tw * th))
    data = tile * (tiles_x * tiles_y)
    ntiles = tiles_x * tiles_y
    entries = []  # (tag, type, count, value-or-offset)
    # layout: header (8), tile data, offsets array, counts array, IFD
    off_data = 8
    off_offsets = off_data + len(data)
    off_counts = off_offsets + 4 * ntiles
    off_ifd = off_counts + 4 * ntiles
    entries = [
        (256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1),
        (322, 4, 1, tw), (323, 4, 1, th), (324, 4, ntiles, off_offsets), (325, 4, ntiles, off_counts),
        (339, 3, 1, 1),
    ]
    with open(out, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", off_ifd))
        f.write(data)
        f.write(b"".join(struct.pack("<I", off_data + i * len(tile)) for i in range(ntiles)))
        f.write(b"".join(struct.pack("<I", len(tile)) for _ in range(ntiles)))
        f.write(struct.pack("<H", len(entries)))
        for tag, typ, count, value in entries:
            if typ == 3 and count == 1:
                f.write(struct.pack("<HHIHH", tag, typ, count, value, 0))
            else:
                f.write(struct.pack("<HHII", tag, typ, count, value))
        f.write(struct.pack("<I", 0))


def constant(out, w, h, pages, value):
    data = struct.pack("<H", value) * (w * h)
    # layout: header (8), the pixels (shared by every page), then one IFD per page
    buf = bytearray(b"II*\x00" + struct.pack("<I", 0)) + data
    link = 4  # where the offset of the next IFD goes
    for page in range(pages):
        struct.pack_into("<I", buf, link, len(buf))
        entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
                   (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1),
                   (297, 3, 2, page | pages << 16), (339, 3, 1, 1)]
        buf += struct.pack("<H", len(entries))
        for tag, typ, count, v in entries:
            if typ == 3:  # SHORT values sit in the entry's low half
                buf += struct.pack("<HHIHH", tag, typ, count, v & 0xFFFF, v >> 16)
            else:
                buf += struct.pack("<HHII", tag, typ, count, v)
        link = len(buf)
        buf += struct.pack("<I", 0)
    open(out, "wb").write(buf)


def png(path):
    raw = open(path, "rb").read()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    pos, idat, ihdr = 8, b"", None
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        kind, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", raw[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = ihdr[:4]
    assert depth == 8 and ctype == 2, "want 8-bit RGB"
    pixels = zlib.decompress(idat)
    assert len(pixels) == h * (3 * w + 1), "wrong data length"
    colours, grey = set(), 0
    for y in range(h):
        row = pixels[y * (3 * w + 1):(y + 1) * (3 * w + 1)]
        assert row[0] == 0, "filter type"
        for x in range(w):
            c = row[1 + 3 * x:4 + 3 * x]
            colours.add(c)
            grey += c == b"\xc8\xc8\xc8"
    print("size", w, h)
    print("colours", len(colours))
    print("grey", grey)


def main():
    what = sys.argv[1]
    if what == "tiled":
        tiled(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif what == "constant":
        constant(sys.argv[2], *(int(a) for a in sys.argv[3:7]))
    elif what == "png":
        png(sys.argv[2])
    elif what == "json":
        v = json.load(open(sys.argv[2]))
        for k in sys.argv[3].split("."):
            v = v[int(k)] if isinstance(v, list) else v[k]
        print(json.dumps(v) if not isinstance(v, str) else v)
    else:
        sys.exit(f"unknown: {what}")


if __name__ == "__main__":
    main()
