"""ROS 2 recordings (MCAP) in, Foxglove out: read images and point clouds from bags without a ROS
installation, and record or serve pipeline outputs with Foxglove's well-known schemas.

- `sensors.mcap.reader`: `McapReader` / `read_mcap`, a plain iterator of decoded messages;
- `sensors.mcap.images`, `sensors.mcap.pointcloud`: sensor_msgs payloads to numpy arrays (and back);
- `sensors.mcap.make_sample`: `python -m sensors.mcap.make_sample OUT.mcap` writes a test recording;
- `sensors.mcap.nodes`: the node kinds `mcap` (source), `mcap_record` and `foxglove_live` (sinks).
"""
