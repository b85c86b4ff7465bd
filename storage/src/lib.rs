//! gfs: master, chunkservers and the client library (see DESIGN.md, "gfs").
