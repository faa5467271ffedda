//! wasm-hash: the SHA-256 of a text. Input {"text": str} → done.output {"sha256": hex, "length": bytes}.

const std = @import("std");
const event = @import("event");

pub fn main(init: std.process.Init) !void {
    var out_buf: [4096]u8 = undefined;
    var stdout = std.Io.File.stdout().writerStreaming(init.io, &out_buf);
    const w = &stdout.interface;

    const input = try event.readInput(init.io, init.arena.allocator(), w) orelse return;
    const text = try event.stringField(w, input, "text") orelse return;
    try event.status(w, "hashing");

    var digest: [std.crypto.hash.sha2.Sha256.digest_length]u8 = undefined;
    std.crypto.hash.sha2.Sha256.hash(text, &digest, .{});
    const hex = std.fmt.bytesToHex(digest, .lower);
    try event.done(w, .{ .sha256 = @as([]const u8, &hex), .length = text.len });
}
