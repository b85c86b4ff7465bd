//! Replication of a VM as a log: the log format, the recorder (primary) and the replayer
//! (backup), and later the logging channel, output commit, failure detection and go-live.
