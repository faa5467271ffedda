//! Event: the Archipelag workload I/O protocol for Zig WASM workloads (DESIGN §4).
//!
//! A workload reads one JSON object from stdin and writes one JSON event per line to stdout.
//! Every helper here writes one complete line and flushes it, so the host streams each event
//! as soon as the module produces it.

const std = @import("std");

pub const Value = std.json.Value;
pub const Writer = std.Io.Writer;

/// The largest input a workload accepts (the host's memory cap is the real bound).
pub const max_input_bytes = 16 * 1024 * 1024;

/// The job input: a parsed JSON object, or null after an `error` event was already written.
pub fn readInput(io: std.Io, gpa: std.mem.Allocator, w: *Writer) !?std.json.ObjectMap {
    var in_buf: [4096]u8 = undefined;
    var reader = std.Io.File.stdin().readerStreaming(io, &in_buf);
    const bytes = reader.interface.allocRemaining(gpa, .limited(max_input_bytes)) catch |err| switch (err) {
        error.StreamTooLong => {
            try fail(w, "input is too large");
            return null;
        },
        else => return err,
    };
    const parsed = std.json.parseFromSliceLeaky(Value, gpa, bytes, .{}) catch {
        try fail(w, "input is not valid JSON");
        return null;
    };
    return switch (parsed) {
        .object => |object| object,
        else => {
            try fail(w, "input must be a JSON object");
            return null;
        },
    };
}

/// The string field `name` of the input, or null after an `error` event saying what is wrong.
pub fn stringField(w: *Writer, input: std.json.ObjectMap, name: []const u8) !?[]const u8 {
    const value = input.get(name) orelse {
        try failFmt(w, "input field \"{s}\" is required", .{name});
        return null;
    };
    return switch (value) {
        .string => |s| s,
        else => {
            try failFmt(w, "input field \"{s}\" must be a string", .{name});
            return null;
        },
    };
}

fn begin(w: *Writer, kind: []const u8) !std.json.Stringify {
    var s: std.json.Stringify = .{ .writer = w };
    try s.beginObject();
    try s.objectField("type");
    try s.write(kind);
    return s;
}

fn end(w: *Writer, s: *std.json.Stringify) !void {
    try s.endObject();
    try w.writeByte('\n');
    try w.flush();
}

pub fn status(w: *Writer, message: []const u8) !void {
    var s = try begin(w, "status");
    try s.objectField("message");
    try s.write(message);
    try end(w, &s);
}

pub fn token(w: *Writer, content: []const u8) !void {
    var s = try begin(w, "token");
    try s.objectField("content");
    try s.write(content);
    try end(w, &s);
}

pub fn progress(w: *Writer, step: u64, total: u64) !void {
    var s = try begin(w, "progress");
    try s.objectField("step");
    try s.write(step);
    try s.objectField("total");
    try s.write(total);
    try end(w, &s);
}

/// The final `done` event; `output` is any value std.json can write (a struct, a json.Value, …).
pub fn done(w: *Writer, output: anytype) !void {
    var s = try begin(w, "done");
    try s.objectField("output");
    try s.write(output);
    try end(w, &s);
}

/// The final `error` event: the workload could not do what the input asked.
pub fn fail(w: *Writer, message: []const u8) !void {
    var s = try begin(w, "error");
    try s.objectField("message");
    try s.write(message);
    try end(w, &s);
}

pub fn failFmt(w: *Writer, comptime fmt: []const u8, args: anytype) !void {
    var buf: [512]u8 = undefined;
    const message = std.fmt.bufPrint(&buf, fmt, args) catch "input is invalid";
    try fail(w, message);
}
