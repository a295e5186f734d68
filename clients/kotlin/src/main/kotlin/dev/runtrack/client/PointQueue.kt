package dev.runtrack.client

import runtrack.v1.Summary.StopRunRequest
import runtrack.v1.Tracking.TrackPoint

/** Where a run stands on the phone. */
enum class RunPhase {
    /** Points are being recorded. */
    RECORDING,

    /** The runner paused: the next point is marked after_pause. */
    PAUSED,

    /** STOP RUN was asked for and is being sent (its request is kept, to send again after a restart). */
    STOPPING,

    /** The server stored the run's overview; points not yet durable are still being sent. */
    STOPPED,
}

/**
 * A run as the queue remembers it. [lastSeq] is the last seq recorded; every point up to [durableSeq]
 * is durable on the server (or was rejected for good) and is never sent again; [stop] is the StopRun
 * request while it is being sent.
 */
data class QueuedRun(
    val runId: String,
    val userId: String,
    val phase: RunPhase,
    val lastSeq: Int = 0,
    val durableSeq: Int = 0,
    val stop: StopRunRequest? = null,
)

/**
 * The phone's store of recorded points: every append is durable when the call returns, before the
 * point is sent. One adapter per platform: [SqlitePointQueue] on the JVM, a Room DAO on Android.
 * Calls block: callers keep them off the main thread.
 */
interface PointQueue : AutoCloseable {
    /** Creates or updates the run; its cursors ([QueuedRun.lastSeq], [QueuedRun.durableSeq]) only move forward. */
    fun saveRun(run: QueuedRun)

    fun run(runId: String): QueuedRun?

    /** Every run not forgotten, oldest first. */
    fun runs(): List<QueuedRun>

    /** Stores points of a saved run (a seq already stored is replaced) and raises its last seq, in one transaction. */
    fun append(runId: String, points: List<TrackPoint>)

    /** Up to [limit] waiting points with seq above [afterSeq] (and above the durable seq), in seq order. */
    fun unacknowledged(runId: String, afterSeq: Int = 0, limit: Int = Int.MAX_VALUE): List<TrackPoint>

    /** Drops every point up to [durableSeq] from the queue: the server holds them. */
    fun acknowledge(runId: String, durableSeq: Int)

    /** How many points of the run wait to be known durable. */
    fun pendingCount(runId: String): Int

    /** The runs with points waiting, oldest first. */
    fun pendingRuns(): List<String>

    /** Every point recorded for the run, in seq order, durable or not: what the overview is computed from. */
    fun trail(runId: String): List<TrackPoint>

    /** Removes the run and its points. */
    fun forget(runId: String)
}
