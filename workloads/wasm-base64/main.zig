//! wasm-base64: Base64 (RFC 4648, padded) encode or decode a text.
//! Input {"text": str, "mode": "encode" | "decode"} ("encode" when absent) → done.output {"text": str}.

const std = @import("std");
const event = @import("event");

pub fn main(init: std.process.Init) !void {
    var out_buf: [4096]u8 = undefined;
    var stdout = std.Io.File.stdout().writerStreaming(init.io, &out_buf);
    const w = &stdout.interface;
    const gpa = init.arena.allocator();

    const input = try event.readInput(init.io, gpa, w) orelse return;
    const text = try event.stringField(w, input, "text") orelse return;
    const mode = if (input.get("mode") != null) (try event.stringField(w, input, "mode") orelse return) else "encode";

    if (std.mem.eql(u8, mode, "encode")) {
        const encoder = std.base64.standard.Encoder;
        const out = try gpa.alloc(u8, encoder.calcSize(text.len));
        try event.done(w, .{ .text = @as([]const u8, encoder.encode(out, text)) });
    } else if (std.mem.eql(u8, mode, "decode")) {
        const decoder = std.base64.standard.Decoder;
        const size = decoder.calcSizeForSlice(text) catch return event.fail(w, "text is not valid base64");
        const out = try gpa.alloc(u8, size);
        decoder.decode(out, text) catch return event.fail(w, "text is not valid base64");
        if (!std.unicode.utf8ValidateSlice(out)) return event.fail(w, "the decoded bytes are not UTF-8 text");
        try event.done(w, .{ .text = @as([]const u8, out) });
    } else {
        try event.fail(w, "input field \"mode\" must be \"encode\" or \"decode\"");
    }
}
