//! wasm-json: the value at a dotted path in a JSON document.
//! Input {"document": any JSON, "path": "a.b.0.c"} → done.output = that value ("" selects the whole
//! document). Object keys are matched exactly; a segment of digits indexes an array.

const std = @import("std");
const event = @import("event");

pub fn main(init: std.process.Init) !void {
    var out_buf: [4096]u8 = undefined;
    var stdout = std.Io.File.stdout().writerStreaming(init.io, &out_buf);
    const w = &stdout.interface;

    const input = try event.readInput(init.io, init.arena.allocator(), w) orelse return;
    const document = input.get("document") orelse return event.fail(w, "input field \"document\" is required");
    const path = try event.stringField(w, input, "path") orelse return;

    var current = document;
    if (path.len > 0) {
        var walked: usize = 0;
        var segments = std.mem.splitScalar(u8, path, '.');
        while (segments.next()) |segment| {
            const at = path[0 .. walked + segment.len];
            walked += segment.len + 1;
            current = switch (current) {
                .object => |object| object.get(segment) orelse
                    return event.failFmt(w, "path \"{s}\": no key \"{s}\" in the object", .{ at, segment }),
                .array => |array| blk: {
                    const index = std.fmt.parseInt(usize, segment, 10) catch
                        return event.failFmt(w, "path \"{s}\": \"{s}\" is not an array index", .{ at, segment });
                    if (index >= array.items.len)
                        return event.failFmt(w, "path \"{s}\": index {d} is past the end of an array of {d}", .{ at, index, array.items.len });
                    break :blk array.items[index];
                },
                else => return event.failFmt(w, "path \"{s}\": cannot step into a {s}", .{ at, kindName(current) }),
            };
        }
    }
    try event.done(w, current);
}

fn kindName(value: event.Value) []const u8 {
    return switch (value) {
        .null => "null",
        .bool => "boolean",
        .integer, .float, .number_string => "number",
        .string => "string",
        .array => "array",
        .object => "object",
    };
}
