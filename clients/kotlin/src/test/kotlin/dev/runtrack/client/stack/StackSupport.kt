package dev.runtrack.client.stack

import dev.runtrack.client.Backoff
import dev.runtrack.client.ErrorDetails
import dev.runtrack.client.Fix
import dev.runtrack.client.RecorderSettings
import dev.runtrack.client.RecorderState
import dev.runtrack.client.SqlitePointQueue
import dev.runtrack.client.errorDetails
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.job
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.fail
import runtrack.v1.Summary.Run
import runtrack.v1.SummaryServiceGrpcKt.SummaryServiceCoroutineStub
import runtrack.v1.Tracking.TrackPoint
import runtrack.v1.TrackingServiceGrpcKt.TrackingServiceCoroutineStub
import runtrack.v1.getRunRequest
import runtrack.v1.getTrackRequest
import java.nio.file.Path
import java.time.Instant
import java.util.Collections
import kotlin.math.PI
import kotlin.math.cos
import kotlin.math.sin
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds
import kotlin.time.TimeSource

/**
 * The recorder's settings for a test: streams ended after 1 s with nothing to send (the test stack
 * ends a stream idle for 4 s), short backoffs: what the app sees happens within seconds.
 */
val testSettings = RecorderSettings(
    streamIdle = 1.seconds,
    backoff = Backoff(base = 50.milliseconds, cap = 1.seconds),
    stopBackoff = Backoff(base = 50.milliseconds, cap = 1.seconds, maxAttempts = Int.MAX_VALUE),
)

/**
 * [count] fixes one second apart, the last a few seconds ago (the server refuses fixes from the
 * future): a runner heading north-east at about 3 m/s along a gentle curve, over a hill with GPS
 * altitude noise, with a heart rate. [origin] keeps one test's trail apart from another's.
 */
fun trail(count: Int, origin: Pair<Double, Double> = 48.8566 to 2.3522, end: Instant = Instant.now().minusSeconds(5)): List<Fix> {
    val start = end.minusSeconds(count.toLong() - 1)
    val metresPerDegree = 111_195.0
    var latitude = origin.first
    var longitude = origin.second
    return (0 until count).map { i ->
        val heading = PI / 4 + 0.4 * sin(i / 40.0)
        val step = 2.8 + 0.4 * sin(i / 7.0)
        if (i > 0) {
            latitude += step * cos(heading) / metresPerDegree
            longitude += step * sin(heading) / (metresPerDegree * cos(Math.toRadians(latitude)))
        }
        Fix(
            time = start.plusSeconds(i.toLong()),
            latitude = latitude,
            longitude = longitude,
            altitudeM = 35.0 + 12.0 * sin(i / 60.0) + 0.8 * sin(i * 1.7),
            horizontalAccuracyM = 4.5f,
            speedMps = step.toFloat(),
            heartRateBpm = 140 + (i / 10) % 20,
            cadenceSpm = 170,
        )
    }
}

/** One phone of a test: its own queue file and the scope its recorders work in; [close] is the app going away. */
class TestPhone(dir: Path, name: String = "phone") : AutoCloseable {
    val file: Path = dir.resolve("$name.db")
    val queue = SqlitePointQueue(file)
    val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)

    override fun close() {
        runBlocking { scope.coroutineContext.job.cancelAndJoin() }  // before the queue closes
        queue.close()
    }
}

/** Every state [state] takes from now on (as an app's collector sees them), until [scope] ends. */
fun CoroutineScope.record(state: StateFlow<RecorderState>): List<RecorderState> {
    val seen = Collections.synchronizedList(mutableListOf<RecorderState>())
    launch(start = CoroutineStart.UNDISPATCHED) { state.collect { seen += it } }
    return seen
}

/** The run's stored trail read back page by page (GetTrack), as the owner; and how many pages it took. */
suspend fun storedTrail(channel: io.grpc.Channel, runId: String, token: String, pageSize: Int = 1000): Pair<List<TrackPoint>, Int> {
    val tracking = TrackingServiceCoroutineStub(channel)
    val points = mutableListOf<TrackPoint>()
    var pageToken = ""
    var pages = 0
    do {
        val page = tracking.getTrack(
            getTrackRequest {
                this.runId = runId
                this.pageSize = pageSize
                this.pageToken = pageToken
            },
            bearer(token),
        )
        pages++
        assertEquals(runId, page.runId)
        assertTrue(page.pointsCount in 1..pageSize, "page $pages holds ${page.pointsCount} points (page size $pageSize)")
        points += page.pointsList
        pageToken = page.nextPageToken
    } while (pageToken.isNotEmpty())
    return points to pages
}

/** GetRun as the owner, once the server's analysis of the complete trail is there (at most [within]). */
suspend fun runWithAnalysis(channel: io.grpc.Channel, runId: String, token: String, within: Duration = 30.seconds): Run {
    val summary = SummaryServiceCoroutineStub(channel)
    val asked = TimeSource.Monotonic.markNow()
    while (true) {
        val run = summary.getRun(getRunRequest { this.runId = runId }, bearer(token))
        if (run.hasAnalysis()) return run
        if (asked.elapsedNow() > within) fail("run $runId: no analysis $within after the trail was complete: $run")
        delay(250)
    }
}

/** The gRPC failure [call] ends with (its status and `google.rpc.Status` details); fails the test when it succeeds. */
suspend fun refused(what: String, call: suspend () -> Any?): ErrorDetails {
    val answer = try {
        withTimeout(30.seconds) { call() }
    } catch (error: CancellationException) {
        throw error
    } catch (error: Exception) {
        return errorDetails(error) ?: throw AssertionError("$what: failed without a gRPC status", error)
    }
    fail("$what: expected a refusal, got an answer: $answer")
}

/** The same run, but for what the server adds later (its analysis of the trail). */
fun Run.withoutAnalysis(): Run = toBuilder().clearAnalysis().build()
