//! wasm-echo-stream: streams a text back one `token` event per word, for streaming tests and benchmarks.
//! Input {"text": str, "repeat": n (default 1)} → n × words token events, then done with usage and
//! output {"tokens": count}. Each token after the first starts with a space, so the tokens concatenate
//! to the text with its whitespace normalised.

const std = @import("std");
const event = @import("event");

const max_repeat = 1_000_000;

pub fn main(init: std.process.Init) !void {
    var out_buf: [4096]u8 = undefined;
    var stdout = std.Io.File.stdout().writerStreaming(init.io, &out_buf);
    const w = &stdout.interface;
    const gpa = init.arena.allocator();

    const input = try event.readInput(init.io, gpa, w) orelse return;
    const text = try event.stringField(w, input, "text") orelse return;
    const repeat: usize = if (input.get("repeat")) |value| switch (value) {
        .integer => |n| if (n >= 0 and n <= max_repeat) @intCast(n) else
            return event.failFmt(w, "input field \"repeat\" must be between 0 and {d}", .{max_repeat}),
        else => return event.fail(w, "input field \"repeat\" must be an integer"),
    } else 1;

    var buf: std.ArrayList(u8) = .empty;
    var count: u64 = 0;
    for (0..repeat) |_| {
        var words = std.mem.tokenizeAny(u8, text, " \t\r\n");
        while (words.next()) |word| {
            buf.clearRetainingCapacity();
            if (count > 0) try buf.append(gpa, ' ');
            try buf.appendSlice(gpa, word);
            try event.token(w, buf.items);
            count += 1;
        }
    }
    try event.done(w, .{ .tokens = count });
}
