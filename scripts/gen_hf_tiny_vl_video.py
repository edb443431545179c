#!/usr/bin/env python3
"""A short test video for the tiny Qwen2.5-VL checkpoint, and transformers' outputs on it.

Companion of scripts/gen_hf_tiny_vl.py (run that first: this reads the checkpoint it wrote in
tests/data/hf-tiny-vl and changes none of its files). Writes:
    videos/clip.mp4       9.5 s of 100x60 H.264 at 12 fps (114 frames), drawn by ffmpeg's
                          testsrc2 source with a moving overlay.
    golden_video.json     see its "reference" entry.

Frames are decoded here exactly as weft decodes them (ffmpeg, first video stream, rgb24, no
scaling) and handed to the Qwen2.5-VL processor with their metadata, sampled at 2 fps with the
total-pixel budget on (do_sample_frames=True, cap_pixels_per_frame=True: vLLM's and
qwen-vl-utils' defaults). Position ids follow Qwen's released rule (text after a medium
resumes one past the largest position the medium used) rather than transformers >= 5.3's,
which resumes after the spatial extent only; both are recorded, and log-probabilities and
greedy tokens use the released rule (passed to the model as position_ids).

Usage (development time only; CI uses the committed files):
    /work/venv-hf/bin/python scripts/gen_hf_tiny_vl_video.py
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch
import transformers
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.video_utils import VideoMetadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_hf_tiny as base  # noqa: E402
import gen_hf_tiny_vl as vl  # noqa: E402

OUT = vl.OUT
VIDEO = os.path.join(OUT, "videos", "clip.mp4")
N_GREEDY = 16
CASES = [
    {
        "name": "video",
        "messages": [{"role": "user", "content": [
            {"type": "video"},
            {"type": "text", "text": "What happens in this video?"}]}],
        "images": [],
    },
    {
        "name": "image_and_video",
        "messages": [{"role": "user", "content": [
            {"type": "image"},
            {"type": "text", "text": "and"},
            {"type": "video"},
            {"type": "text", "text": "Which one moves?"}]}],
        "images": ["wide"],
    },
]


def make_video():
    os.makedirs(os.path.dirname(VIDEO), exist_ok=True)
    subprocess.run([
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=100x60:rate=12:duration=9.5",
        "-vf", "drawbox=x='mod(t*40,80)':y=10:w=20:h=20:color=red@1:t=fill",
        "-c:v", "libx264", "-preset", "veryslow", "-crf", "30", "-pix_fmt", "yuv420p",
        "-bitexact", "-map_metadata", "-1", VIDEO,
    ], check=True)


def probe():
    out = subprocess.run([
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
        "-show_entries", "stream=width,height,avg_frame_rate,nb_read_packets", "-of", "json",
        VIDEO,
    ], check=True, capture_output=True).stdout
    s = json.loads(out)["streams"][0]
    num, den = s["avg_frame_rate"].split("/")
    return int(s["width"]), int(s["height"]), float(num) / float(den), int(s["nb_read_packets"])


def decode_all(width, height):
    raw = subprocess.run([
        "ffmpeg", "-v", "error", "-nostdin", "-i", VIDEO, "-map", "0:v:0",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ], check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)


def released_positions(ids, grids, image_token, video_token):
    """get_rope_index as Qwen's released code and vLLM compute it (see the module doc)."""
    out = [[], [], []]
    nxt, i = 0, 0
    grids = iter(grids)
    while i < len(ids):
        if ids[i] not in (image_token, video_token):
            for c in range(3):
                out[c].append(nxt)
            nxt += 1
            i += 1
            continue
        (t, h, w), step = next(grids)
        h, w = h // 2, w // 2
        times = (torch.arange(t) * step).long().tolist()
        for f in range(t):
            for r in range(h):
                for col in range(w):
                    out[0].append(nxt + times[f])
                    out[1].append(nxt + r)
                    out[2].append(nxt + col)
        n = t * h * w
        i += n
        nxt = max(max(out[c][-n:]) for c in range(3)) + 1
    return out, nxt - len(ids)


@torch.no_grad()
def main():
    torch.set_num_threads(1)
    make_video()
    width, height, fps, total = probe()
    frames = decode_all(width, height)
    assert len(frames) == total, (len(frames), total)
    metadata = VideoMetadata(total_num_frames=total, fps=fps, width=width, height=height,
                             duration=total / fps)
    processor = AutoProcessor.from_pretrained(OUT)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        OUT, dtype=torch.float32, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.eval()
    cfg = model.config
    video_kwargs = dict(do_sample_frames=True, fps=2.0, cap_pixels_per_frame=True)

    feats = processor.video_processor(videos=[frames], video_metadata=[metadata],
                                      return_metadata=True, return_tensors="pt", **video_kwargs)
    pv, thw = feats["pixel_values_videos"], feats["video_grid_thw"]
    sampled = feats["video_metadata"][0]
    indices = [int(i) for i in sampled.frames_indices]
    whole = vl.tower(model, pv, thw)["merged"]
    # The tower never mixes temporal patches: encoding them one at a time gives the same rows.
    t, gh, gw = thw[0].tolist()
    per = gh * gw
    parts = [vl.tower(model, pv[k * per:(k + 1) * per], torch.tensor([[1, gh, gw]]))["merged"]
             for k in range(t)]
    split_diff = float((torch.cat(parts) - whole).abs().max())
    assert split_diff < 1e-5, split_diff
    video = {
        "file": "videos/clip.mp4",
        "width": width,
        "height": height,
        "fps": fps,
        "total_frames": total,
        "sampled_indices": indices,
        "sampled_fps": sampled.sampled_fps,
        "video_grid_thw": thw[0].tolist(),
        "frames_rgb_sum": [int(frames[i].astype(np.int64).sum()) for i in indices],
        "pixel_values": vl.pixel_summary(pv),
        # The first and last temporal patches' rows (all of them would be most of the file).
        "tower_output_first_patch": vl.rounded(whole[: per // 4]),
        "tower_output_last_patch": vl.rounded(whole[-(per // 4):]),
        "split_max_abs_diff": split_diff,
    }
    print(f"  video {width}x{height} {fps} fps {total} frames: sampled {indices}, grid "
          f"{thw[0].tolist()}, {whole.shape[0]} tokens")

    files = {name: file for name, file, *_ in vl.IMAGES}
    cases = []
    for case in CASES:
        text = processor.apply_chat_template(case["messages"], add_generation_prompt=True,
                                             tokenize=False)
        images = [vl.load_image(files[n]) for n in case["images"]] or None
        inputs = processor(text=[text], images=images, videos=[frames],
                           video_metadata=[metadata], return_tensors="pt", **video_kwargs)
        ids = inputs["input_ids"][0].tolist()
        seconds = [float(s) for s in inputs["second_per_grid_ts"]]
        grids = []
        image_grids = iter(inputs.get("image_grid_thw", torch.zeros(0, 3)).tolist())
        video_grids = iter(inputs["video_grid_thw"].tolist())
        video_seconds = iter(inputs["second_per_grid_ts"])
        # Media in prompt order (each run of placeholders is one medium).
        prev = None
        for tok in ids:
            if tok != prev and tok == cfg.image_token_id:
                grids.append((next(image_grids), 1.0))
            elif tok != prev and tok == cfg.video_token_id:
                step = torch.tensor(cfg.vision_config.tokens_per_second) * next(video_seconds)
                grids.append((next(video_grids), step))
            prev = tok
        pos, delta = released_positions(ids, grids, cfg.image_token_id, cfg.video_token_id)
        hf_pos, hf_delta = model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs["second_per_grid_ts"],
            attention_mask=inputs["attention_mask"])
        media = {k: inputs[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos",
                                        "video_grid_thw", "second_per_grid_ts") if k in inputs}

        def forward(seq, positions):
            model.model.rope_deltas = None
            p = torch.tensor(positions)[:, None, :]
            return model(input_ids=torch.tensor([seq]), position_ids=p,
                         mm_token_type_ids=torch.tensor([[0] * len(seq)]).masked_fill(
                             torch.tensor([[x in (cfg.image_token_id, cfg.video_token_id)
                                            for x in seq]]), 1),
                         use_cache=False, **media).logits[0]

        logits = forward(ids, pos)
        seq, positions, greedy, margins = list(ids), [list(c) for c in pos], [], []
        last = logits[-1]
        for _ in range(N_GREEDY):
            tok = int(last.argmax())
            margins.append(round(base.top2_margin(last), 6))
            greedy.append(tok)
            nxt = len(seq) + delta
            seq.append(tok)
            for c in range(3):
                positions[c].append(nxt)
            last = forward(seq, positions)[-1]
        vision_end = ids.index(cfg.vision_end_token_id)
        cases.append({
            "name": case["name"],
            "messages": case["messages"],
            "images": case["images"],
            "text": text,
            "input_ids": ids,
            "second_per_grid_ts": seconds,
            "position_ids": pos,
            "rope_deltas": delta,
            "transformers_position_ids": hf_pos[:, 0, :].tolist(),
            "transformers_rope_deltas": int(hf_delta.reshape(-1)[0]),
            "logprobs_first": base.log_softmax_list(logits[0]),
            "logprobs_vision_end": base.log_softmax_list(logits[vision_end]),
            "vision_end_position": vision_end,
            "logprobs_last": base.log_softmax_list(logits[-1]),
            "greedy_tokens": greedy,
            "greedy_margins": margins,
        })
        print(f"  {case['name']}: {len(ids)} ids, rope_delta {delta} (transformers "
              f"{int(hf_delta.reshape(-1)[0])}), greedy {greedy}, min margin {min(margins):.3f}")

    golden = {
        "generator": "scripts/gen_hf_tiny_vl_video.py",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "ffmpeg": subprocess.run(["ffmpeg", "-version"], capture_output=True,
                                              text=True).stdout.split("\n")[0]},
        "video_processor": {"do_sample_frames": True, "fps": 2.0, "cap_pixels_per_frame": True},
        "reference": (
            "float32, eager attention. video: the clip's stream (ffprobe: avg_frame_rate, counted "
            "packets), the sampled frame indices and sampled_fps, the sum of each sampled "
            "frame's rgb24 bytes as ffmpeg decodes them, the video processor's "
            "pixel_values_videos (summary) and video_grid_thw, and the tower's output over the "
            "whole video (the first and the last temporal patch's rows, in processor order; "
            "split_max_abs_diff: the same rows from each temporal patch encoded alone). cases[]: input_ids after the processor expanded "
            "the placeholders; position_ids / rope_deltas by the released rule (used for the "
            "log-probabilities and greedy tokens: a full forward pass per step with those "
            "positions), transformers_position_ids / _rope_deltas from get_rope_index; "
            "log-softmax at position 0, at the first <|vision_end|> and at the last prompt "
            "position; 16 greedy tokens with their top-1 minus top-2 margins."
        ),
        "video": video,
        "cases": cases,
    }
    with open(os.path.join(OUT, "golden_video.json"), "w") as f:
        f.write(vl.dump_json(golden))
        f.write("\n")
    print(f"  wrote {VIDEO} ({os.path.getsize(VIDEO)} bytes) and golden_video.json")


if __name__ == "__main__":
    main()
