package dev.runtrack.client

import io.grpc.Channel
import io.grpc.Metadata
import io.grpc.Status
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.channels.Channel as Mailbox
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.flow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeoutOrNull
import runtrack.v1.Summary.Run
import runtrack.v1.Summary.StopRunRequest
import runtrack.v1.SummaryServiceGrpcKt.SummaryServiceCoroutineStub
import runtrack.v1.TrackingServiceGrpcKt.TrackingServiceCoroutineStub
import runtrack.v1.getTrackCursorRequest
import runtrack.v1.recordTrackRequest
import runtrack.v1.stopRunRequest
import java.time.Instant
import java.util.UUID
import java.util.concurrent.atomic.AtomicInteger
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds
import kotlin.time.TimeSource

/** How the recorder's link to the server stands. */
enum class Connection {
    /** Nothing to send. */
    IDLE,

    /** A RecordTrack stream is open. */
    STREAMING,

    /** A call failed in a way a retry can fix: waiting before the next try. */
    BACKING_OFF,

    /** The server refused the run for good (see [RecorderState.error]); its points stay in the queue. */
    FAILED,
}

/** What the app shows while a run records and syncs. */
data class RecorderState(
    val runId: String? = null,
    val phase: RunPhase? = null,
    /** Points recorded (the last seq). */
    val lastSeq: Int = 0,
    /** Every point up to this seq is durable on the server (or was rejected for good). */
    val durableSeq: Int = 0,
    /** Points recorded and not yet known durable. */
    val waiting: Int = 0,
    val connection: Connection = Connection.IDLE,
    /** Points the server rejected (each named with its reason in the stream's answer). */
    val rejected: Int = 0,
    /** The last failure, retried or final. */
    val error: ErrorDetails? = null,
)

data class RecorderSettings(
    val pointsPerMessage: Int = 50,
    /** A stream with nothing to send for this long is ended, which tells what is durable. */
    val streamIdle: Duration = 10.seconds,
    /** A stream is ended after this long even while points flow, for the same reason. */
    val streamLifetime: Duration = 60.seconds,
    /** How long a call may take (a stream: after its lifetime) before it counts as failed: a dead connection. */
    val callTimeout: Duration = 30.seconds,
    /** Between failed streams; a run's upload never gives up on a failure a retry can fix. */
    val backoff: Backoff = Backoff(cap = 30.seconds),
    /** Between StopRun attempts: retried until it answers. */
    val stopBackoff: Backoff = Backoff(cap = 30.seconds, maxAttempts = Int.MAX_VALUE),
    /** Remove the run from the queue once it is stopped and every point is durable. */
    val forgetWhenSynced: Boolean = true,
)

/**
 * Records one run: keeps every point in the [queue] (committed before it is sent), streams them on
 * RecordTrack, resumes from the server's cursor after a failure, and sends STOP RUN with the overview
 * computed on the phone. One recorder per run; runs left by an earlier process are taken up with
 * [reopen]. No call blocks the caller's thread: work happens in [scope] (the queue on [io]).
 *
 * The protocol (as the reference client, runtrack_client): a clean end of a stream means every point
 * sent on it was stored or rejected for good, and the answer's contiguous_seq says every point up to
 * it is durable: only those are dropped from the queue. After a failure a retry can fix, the recorder
 * waits (full jitter, at least the server's RetryInfo), asks GetTrackCursor, and sends again every
 * point above its contiguous_seq; a point sent twice is stored once.
 */
class RunRecorder(
    channel: Channel,
    private val queue: PointQueue,
    private val scope: CoroutineScope,
    private val tokens: Tokens = Tokens { null },
    private val settings: RecorderSettings = RecorderSettings(),
    private val io: CoroutineDispatcher = Dispatchers.IO,
) {
    private val tracking = TrackingServiceCoroutineStub(channel)
    private val summary = SummaryServiceCoroutineStub(channel)
    private val mutableState = MutableStateFlow(RecorderState())
    val state: StateFlow<RecorderState> = mutableState.asStateFlow()

    private sealed interface Command {
        class Open(val run: QueuedRun, val created: Boolean, val done: CompletableDeferred<QueuedRun>) : Command
        class Point(val fix: Fix) : Command
        data object Pause : Command
        data object Resume : Command
        class Stop(val timeZone: String, val stopTime: Instant, val done: CompletableDeferred<StopRunRequest>) : Command
        data object Stopped : Command
    }

    // Commands run one at a time, in order, in one coroutine: it alone changes `run`.
    private val commands = Mailbox<Command>(Mailbox.UNLIMITED)
    private val wake = Mailbox<Unit>(Mailbox.CONFLATED)
    private var run: QueuedRun? = null
    private var resumed = false
    @Volatile private var uploader: Job? = null

    init {
        scope.launch { for (command in commands) handle(command) }
    }

    /** START RUN: a new run with the id the phone chose. */
    suspend fun start(runId: String = UUID.randomUUID().toString(), userId: String = ""): String {
        UUID.fromString(runId)  // the server takes only a UUID
        open(QueuedRun(runId, userId, RunPhase.RECORDING), created = true)
        return runId
    }

    /** Takes up a run the queue holds from an earlier process: goes on syncing it, and STOP RUN if it was under way. */
    suspend fun reopen(runId: String) {
        val run = withContext(io) { queue.run(runId) } ?: throw IllegalArgumentException("run $runId is not in the queue")
        open(run, created = false)
        run.stop?.takeIf { run.phase == RunPhase.STOPPING }?.let { scope.launch { sendStop(it) } }
    }

    /** Records a fix; returns at once (the point is committed to the queue, then sent). Ignored while paused. */
    fun addPoint(fix: Fix) {
        commands.trySend(Command.Point(fix))
    }

    fun pause() {
        commands.trySend(Command.Pause)
    }

    /** The next point is the first after a pause: nothing between it and the point before counts. */
    fun resume() {
        commands.trySend(Command.Resume)
    }

    /**
     * STOP RUN: computes the overview from every point recorded, then sends it until the server
     * answers (StopRun is idempotent). Points not yet durable go on syncing after it answers.
     */
    suspend fun stop(timeZone: String = "", stopTime: Instant = Instant.now()): Run {
        val done = CompletableDeferred<StopRunRequest>()
        commands.send(Command.Stop(timeZone, stopTime, done))
        return sendStop(done.await())
    }

    /** Waits until the run is stopped and every point is durable. */
    suspend fun synced() {
        state.first { it.phase == RunPhase.STOPPED && it.waiting == 0 }
        uploader?.join()
    }

    private suspend fun open(run: QueuedRun, created: Boolean) {
        val done = CompletableDeferred<QueuedRun>()
        commands.send(Command.Open(run, created, done))
        done.await()
    }

    private suspend fun handle(command: Command) {
        try {
            when (command) {
                is Command.Open -> {
                    check(run == null) { "this recorder already records run ${run?.runId}" }
                    val opened = withContext(io) {
                        if (command.created) check(queue.run(command.run.runId) == null) { "run ${command.run.runId} exists" }
                        queue.saveRun(command.run)
                        queue.run(command.run.runId)!!
                    }
                    run = opened
                    mutableState.update { it.copy(runId = opened.runId, phase = opened.phase, lastSeq = opened.lastSeq) }
                    uploader = scope.launch { upload(opened.runId, opened.userId, resumeFirst = !command.created) }
                    command.done.complete(opened)
                }
                is Command.Point -> record(command.fix)
                Command.Pause -> run?.let { pauseRun(it) }
                Command.Resume -> if (run?.phase == RunPhase.PAUSED) {
                    resumed = true
                    mutableState.update { it.copy(phase = RunPhase.RECORDING) }
                }
                is Command.Stop -> command.done.complete(prepareStop(command))
                Command.Stopped -> changePhase(RunPhase.STOPPING, RunPhase.STOPPED)
            }
        } catch (error: CancellationException) {
            throw error
        } catch (error: Exception) {
            when (command) {
                is Command.Open -> command.done.completeExceptionally(error)
                is Command.Stop -> command.done.completeExceptionally(error)
                else -> mutableState.update { it.copy(error = ErrorDetails(Status.Code.INTERNAL, error.toString())) }
            }
        }
    }

    private suspend fun record(fix: Fix) {
        val current = run ?: return
        if (current.phase != RunPhase.RECORDING && !(current.phase == RunPhase.PAUSED && resumed)) return
        val seq = current.lastSeq + 1
        val point = fix.toTrackPoint(seq, afterPause = resumed && current.lastSeq > 0)
        val next = current.copy(phase = RunPhase.RECORDING, lastSeq = seq)
        withContext(io) {
            queue.append(current.runId, listOf(point))
            if (current.phase != next.phase) queue.saveRun(next)
        }
        run = next
        resumed = false
        mutableState.update { it.copy(phase = next.phase, lastSeq = seq, waiting = it.waiting + 1) }
        wake.trySend(Unit)
    }

    private suspend fun pauseRun(current: QueuedRun) {
        resumed = false
        if (current.phase == RunPhase.RECORDING) {
            withContext(io) { queue.saveRun(current.copy(phase = RunPhase.PAUSED)) }
            run = current.copy(phase = RunPhase.PAUSED)
        }
        if (run?.phase == RunPhase.PAUSED) mutableState.update { it.copy(phase = RunPhase.PAUSED) }
    }

    private suspend fun changePhase(from: RunPhase, to: RunPhase) {
        val current = run?.takeIf { it.phase == from } ?: return
        val next = current.copy(phase = to)
        withContext(io) { queue.saveRun(next) }
        run = next
        mutableState.update { it.copy(phase = to) }
        wake.trySend(Unit)
    }

    private suspend fun prepareStop(command: Command.Stop): StopRunRequest {
        val current = checkNotNull(run) { "no run to stop" }
        current.stop?.let { return it }  // STOP RUN again: the same request, answered with the same Run
        check(current.phase == RunPhase.RECORDING || current.phase == RunPhase.PAUSED) { "run ${current.runId} is ${current.phase}" }
        val trail = withContext(io) { queue.trail(current.runId) }
        val overview = if (trail.isEmpty()) {
            val now = command.stopTime.let { it.epochSecond * 1_000_000 + it.nano / 1_000 }
            Overview(now, now, 0.0, 0, 0.0, 0, null, "")
        } else {
            Overview.of(trail.map { it.toSample() }, pointCount = current.lastSeq)
        }
        val request = stopRunRequest {
            runId = current.runId
            userId = current.userId
            this.overview = overview.toProto()
            timeZone = command.timeZone
        }
        val next = current.copy(phase = RunPhase.STOPPING, stop = request)
        withContext(io) { queue.saveRun(next) }
        run = next
        mutableState.update { it.copy(phase = RunPhase.STOPPING) }
        wake.trySend(Unit)
        return request
    }

    private suspend fun sendStop(request: StopRunRequest): Run {
        val answer = retrying(settings.stopBackoff, onRetry = { error, _ -> failed(error, Connection.BACKING_OFF) }) {
            tokens.authorized { summary.within(settings.callTimeout).stopRun(request, it) }
        }
        commands.send(Command.Stopped)
        return answer
    }

    private suspend fun upload(runId: String, userId: String, resumeFirst: Boolean) {
        var attempt = 0
        var refresh = false
        var resume = resumeFirst  // a run taken up again starts from the server's cursor, as after a broken stream
        while (true) {
            publish(runId)
            if (state.value.waiting == 0 && !resume) {
                if (state.value.phase == RunPhase.STOPPED) break
                if (state.value.connection != Connection.FAILED) mutableState.update { it.copy(connection = Connection.IDLE) }
                wake.receive()
                continue
            }
            try {
                val headers = tokens.headers(refresh)
                if (resume) {
                    val contiguous = cursor(runId, headers)
                    withContext(io) { queue.acknowledge(runId, contiguous) }
                    resume = false
                } else {
                    mutableState.update { it.copy(connection = Connection.STREAMING) }
                    val sent = AtomicInteger(0)
                    val answer = tracking.within(settings.streamLifetime + settings.callTimeout)
                        .recordTrack(requests(runId, userId, sent), headers)
                    withContext(io) { queue.acknowledge(runId, maxOf(sent.get(), answer.contiguousSeq)) }
                    mutableState.update { it.copy(rejected = it.rejected + answer.pointsRejected, error = null) }
                    attempt = 0
                }
                refresh = false
            } catch (error: CancellationException) {
                throw error
            } catch (error: Exception) {
                val advice = retryAdvice(error)
                val expired = errorDetails(error)?.code == Status.Code.UNAUTHENTICATED && !refresh
                if (advice == null && !expired) {
                    failed(error, Connection.FAILED)
                    return
                }
                failed(error, Connection.BACKING_OFF)
                refresh = expired
                delay(settings.backoff.delay(++attempt, advice ?: RetryAdvice(Duration.ZERO, false)))
                resume = true
            }
        }
        mutableState.update { it.copy(connection = Connection.IDLE) }
        if (settings.forgetWhenSynced) withContext(io) { queue.forget(runId) }
    }

    /** The run's contiguous_seq; 0 while the server knows no point of it. */
    private suspend fun cursor(runId: String, headers: Metadata): Int = try {
        tracking.within(settings.callTimeout).getTrackCursor(getTrackCursorRequest { this.runId = runId }, headers).contiguousSeq
    } catch (error: Exception) {
        if (errorDetails(error)?.code == Status.Code.NOT_FOUND) 0 else throw error
    }

    /**
     * The messages of one stream: the run's waiting points in seq order, then new ones as they are
     * recorded, until the stream has been idle or open long enough, or the run is stopping and all is sent.
     */
    private fun requests(runId: String, userId: String, sent: AtomicInteger): Flow<runtrack.v1.Tracking.RecordTrackRequest> = flow {
        val opened = TimeSource.Monotonic.markNow()
        var first = true
        while (true) {
            val batch = withContext(io) { queue.unacknowledged(runId, sent.get(), settings.pointsPerMessage) }
            if (batch.isNotEmpty() || first) {
                emit(recordTrackRequest {
                    if (first) {
                        this.runId = runId
                        this.userId = userId
                    }
                    points += batch
                })
                first = false
                batch.lastOrNull()?.let { sent.set(it.seq) }
                if (batch.size == settings.pointsPerMessage) continue
            }
            val phase = state.value.phase
            if (phase == RunPhase.STOPPING || phase == RunPhase.STOPPED || opened.elapsedNow() >= settings.streamLifetime) break
            withTimeoutOrNull(settings.streamIdle) { wake.receive() } ?: break
        }
    }

    private suspend fun publish(runId: String) {
        val (durable, waiting) = withContext(io) { (queue.run(runId)?.durableSeq ?: 0) to queue.pendingCount(runId) }
        mutableState.update { it.copy(durableSeq = durable, waiting = waiting) }
    }

    private fun failed(error: Throwable, connection: Connection) {
        val details = errorDetails(error) ?: ErrorDetails(Status.Code.UNKNOWN, error.toString())
        mutableState.update { it.copy(connection = connection, error = details) }
    }
}
