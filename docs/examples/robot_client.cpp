// A robot-side C++ client for `costream serve` (protocol version 1, docs/zmq-protocol.md).
//
// Sends camera frames (H x W x 3 uint8, raw) over a DEALER socket, waits for each reply, checks it
// (prefix, request id, status, tensor descriptor and, against a pass-through pipeline, the bytes),
// and prints one JSON line per reply and a summary. Built and run against a real server by
// tests/test_zmq_cpp_client.py:
//
//   g++ -std=c++17 -O2 docs/examples/robot_client.cpp -o robot_client -lzmq
//   costream serve pipelines/serve_passthrough.yaml --endpoint tcp://127.0.0.1:5555 &
//   ./robot_client tcp://127.0.0.1:5555 --frames 10 --height 480 --width 640 --check-echo
//
// Needs libzmq, cppzmq and nlohmann/json (Debian/Ubuntu: libzmq3-dev cppzmq-dev nlohmann-json3-dev).
// `--dtype NAME` sends a wrong dtype to see the server's error reply (exit 0 if its code is
// `--expect-error CODE`). Exit codes: 0 ok, 1 usage, 2 timeout, 3 protocol violation, 4 server error,
// 5 the reply differs from what was sent (with --check-echo).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

namespace {

constexpr uint8_t kVersion = 1;
constexpr uint8_t kFrame = 1;
constexpr uint8_t kResult = 2;

int64_t monotonic_ns() {  // CLOCK_MONOTONIC on Linux, the clock the server stamps with
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Part 0: the 8-byte prefix (magic, version, message type, reserved) and the JSON header.
zmq::message_t make_header(uint8_t type, const nlohmann::json& header) {
    const std::string body = header.dump();
    zmq::message_t msg(8 + body.size());
    auto* p = static_cast<uint8_t*>(msg.data());
    std::memcpy(p, "CSTM", 4);
    p[4] = kVersion;
    p[5] = type;
    p[6] = 0;
    p[7] = 0;
    std::memcpy(p + 8, body.data(), body.size());
    return msg;
}

struct Options {
    std::string endpoint;
    std::string client;  // this robot's name (the server keeps its streams apart); default: HOST-PID
    int frames = 10;
    int height = 480;
    int width = 640;
    std::string dtype = "uint8";
    std::string expect_error;
    bool check_echo = false;
    int timeout_ms = 5000;
};

bool parse_args(int argc, char** argv, Options& o) {
    if (argc < 2) return false;
    o.endpoint = argv[1];
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", name);
                return nullptr;
            }
            return argv[++i];
        };
        const char* v = nullptr;
        if (a == "--frames" && (v = value("--frames"))) o.frames = std::atoi(v);
        else if (a == "--height" && (v = value("--height"))) o.height = std::atoi(v);
        else if (a == "--width" && (v = value("--width"))) o.width = std::atoi(v);
        else if (a == "--dtype" && (v = value("--dtype"))) o.dtype = v;
        else if (a == "--client" && (v = value("--client"))) o.client = v;
        else if (a == "--expect-error" && (v = value("--expect-error"))) o.expect_error = v;
        else if (a == "--timeout-ms" && (v = value("--timeout-ms"))) o.timeout_ms = std::atoi(v);
        else if (a == "--check-echo") o.check_echo = true;
        else return false;
    }
    if (o.client.empty()) {  // unique per process unless given: two robots never share a stream's state
        char host[64] = {0};
        gethostname(host, sizeof host - 1);
        o.client = std::string(host) + "-" + std::to_string(getpid());
    }
    return o.frames > 0 && o.height > 0 && o.width > 0 && o.client.size() <= 128;
}

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    if (!parse_args(argc, argv, opt)) {
        std::fprintf(stderr,
                     "usage: %s ENDPOINT [--client NAME] [--frames N] [--height H] [--width W] [--check-echo]\n"
                     "       [--dtype NAME --expect-error CODE] [--timeout-ms MS]\n",
                     argv[0]);
        return 1;
    }
    zmq::context_t ctx;
    zmq::socket_t sock(ctx, zmq::socket_type::dealer);
    sock.set(zmq::sockopt::rcvtimeo, opt.timeout_ms);
    sock.set(zmq::sockopt::linger, 0);
    sock.connect(opt.endpoint);

    const size_t nbytes = static_cast<size_t>(opt.height) * opt.width * 3;
    std::vector<uint8_t> image(nbytes);
    std::vector<int64_t> round_trips_ns;
    for (int seq = 0; seq < opt.frames; ++seq) {
        for (size_t i = 0; i < nbytes; ++i) image[i] = static_cast<uint8_t>((i * 7 + seq) & 0xFF);
        const int64_t t_capture = monotonic_ns();
        const int request_id = seq + 1;
        const nlohmann::json header = {
            {"request_id", request_id}, {"client", opt.client}, {"stream", "front_cam"}, {"seq", seq},
            {"t_capture_ns", t_capture},
            {"tensors", {{{"name", "image"}, {"dtype", opt.dtype}, {"shape", {opt.height, opt.width, 3}},
                          {"encoding", "raw"}, {"nbytes", nbytes}}}}};
        std::vector<zmq::message_t> parts;
        parts.push_back(make_header(kFrame, header));
        parts.emplace_back(image.data(), image.size());  // a copy; zmq_msg_init_data for zero-copy
        zmq::send_multipart(sock, parts);

        std::vector<zmq::message_t> reply;
        if (!zmq::recv_multipart(sock, std::back_inserter(reply))) {
            std::fprintf(stderr, "no reply within %d ms: is `costream serve` running at %s?\n",
                         opt.timeout_ms, opt.endpoint.c_str());
            return 2;
        }
        const int64_t t_reply = monotonic_ns();
        const auto* r = static_cast<const uint8_t*>(reply.empty() ? nullptr : reply[0].data());
        if (r == nullptr || reply[0].size() < 8 || std::memcmp(r, "CSTM", 4) != 0 || r[4] != kVersion ||
            r[5] != kResult) {
            std::fprintf(stderr, "reply does not start with the CSTM v1 RESULT prefix\n");
            return 3;
        }
        const auto result = nlohmann::json::parse(r + 8, r + reply[0].size(), nullptr, false);
        if (result.is_discarded() || !result.is_object()) {
            std::fprintf(stderr, "reply header is not a JSON object\n");
            return 3;
        }
        if (result.value("request_id", -1) != request_id) {
            std::fprintf(stderr, "reply to request %d carries request_id %s\n", request_id,
                         result.value("request_id", nlohmann::json()).dump().c_str());
            return 3;
        }
        if (result.value("status", "") != "ok") {
            const auto error = result.value("error", nlohmann::json::object());
            const std::string code = error.value("code", "");
            std::printf("{\"seq\": %d, \"status\": \"error\", \"code\": \"%s\"}\n", seq, code.c_str());
            if (!opt.expect_error.empty() && code == opt.expect_error) return 0;
            std::fprintf(stderr, "server error [%s]: %s\n", code.c_str(), error.value("message", "").c_str());
            return 4;
        }
        if (!opt.expect_error.empty()) {
            std::fprintf(stderr, "expected error %s, got status ok\n", opt.expect_error.c_str());
            return 4;
        }
        const auto& tensors = result.at("tensors");
        if (!tensors.is_array() || reply.size() != 1 + tensors.size()) {
            std::fprintf(stderr, "header lists %zu tensors but the reply has %zu buffers\n",
                         tensors.is_array() ? tensors.size() : 0, reply.size() - 1);
            return 3;
        }
        for (size_t i = 0; i < tensors.size(); ++i) {
            if (tensors[i].value("nbytes", static_cast<size_t>(0)) != reply[1 + i].size()) {
                std::fprintf(stderr, "tensor %zu: nbytes does not match its buffer\n", i);
                return 3;
            }
        }
        if (opt.check_echo) {  // a pass-through pipeline returns exactly the frame it was sent
            const auto& t = tensors.at(0);
            const bool same_desc = t.value("dtype", "") == "uint8" &&
                                   t.at("shape") == nlohmann::json({opt.height, opt.width, 3});
            if (!same_desc || reply[1].size() != nbytes || std::memcmp(reply[1].data(), image.data(), nbytes) != 0) {
                std::fprintf(stderr, "seq %d: the reply differs from the frame sent\n", seq);
                return 5;
            }
        }
        round_trips_ns.push_back(t_reply - t_capture);
        const auto latency = result.value("latency", nlohmann::json::object());
        std::printf("{\"seq\": %d, \"status\": \"ok\", \"round_trip_us\": %.1f, \"server_total_ms\": %s}\n", seq,
                    (t_reply - t_capture) / 1e3, latency.value("total", nlohmann::json()).dump().c_str());
    }
    std::sort(round_trips_ns.begin(), round_trips_ns.end());
    const double p50 = round_trips_ns.empty() ? 0.0 : round_trips_ns[round_trips_ns.size() / 2] / 1e3;
    std::printf("{\"frames\": %d, \"ok\": %zu, \"round_trip_p50_us\": %.1f}\n", opt.frames, round_trips_ns.size(), p50);
    return 0;
}
