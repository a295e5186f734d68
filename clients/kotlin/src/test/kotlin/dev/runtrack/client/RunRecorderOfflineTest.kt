package dev.runtrack.client

import io.grpc.Status
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.job
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.time.Instant
import java.util.UUID
import java.util.concurrent.atomic.AtomicInteger
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds

/**
 * The recorder with no server to reach (a loopback port nothing listens on): nothing is lost, the
 * pause is marked, the overview is ready to send, and a new process takes the run up where it was.
 */
class RunRecorderOfflineTest {
    @TempDir
    lateinit var dir: Path

    private val nowhere = Channels.plaintext("127.0.0.1", 1)
    private val settings = RecorderSettings(backoff = Backoff(base = 10.milliseconds, cap = 50.milliseconds))

    private fun fix(second: Long) = Fix(Instant.ofEpochSecond(1_790_000_000 + second), 45.0 + second * 3e-5, 7.0, heartRateBpm = 150)

    @Test
    fun `every point is kept while the server cannot be reached, and the run is taken up after a restart`() = runBlocking {
        val runId = UUID.randomUUID().toString()
        val tokensAsked = AtomicInteger()
        val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
        SqlitePointQueue(dir.resolve("queue.db")).use { queue ->
            val recorder = RunRecorder(nowhere, queue, scope, tokens = { tokensAsked.incrementAndGet(); "token" }, settings = settings)
            recorder.start(runId, "runner")
            (1L..3L).forEach { recorder.addPoint(fix(it)) }
            recorder.pause()
            recorder.addPoint(fix(4))  // while paused: not recorded
            recorder.resume()
            (10L..11L).forEach { recorder.addPoint(fix(it)) }

            val offline = withTimeout(10.seconds) {
                recorder.state.first { it.lastSeq == 5 && it.connection == Connection.BACKING_OFF && it.waiting == 5 }
            }
            assertEquals(Status.Code.UNAVAILABLE, offline.error?.code)
            assertEquals(0, offline.durableSeq)
            assertTrue(tokensAsked.get() >= 1, "the token hook is asked before each stream")
            val trail = queue.trail(runId)
            assertEquals((1..5).toList(), trail.map { it.seq })
            assertEquals(listOf(4), trail.filter { it.afterPause }.map { it.seq })

            scope.launch { recorder.stop("Europe/Paris") }  // retried until it answers: here, never
            withTimeout(10.seconds) { recorder.state.first { it.phase == RunPhase.STOPPING } }
            val stop = queue.run(runId)!!.stop!!
            val expected = Overview.of(trail.map { it.toSample() })
            assertEquals(5, stop.overview.pointCount)
            assertEquals(expected.distanceM, stop.overview.distanceM)
            assertEquals(expected.polyline, stop.overview.polyline)
            assertEquals(3, stop.overview.movingTime.seconds)  // 2 s before the pause, 1 s after it
            assertEquals("Europe/Paris", stop.timeZone)
            scope.coroutineContext.job.cancelAndJoin()  // before the queue closes
        }

        val later = CoroutineScope(SupervisorJob() + Dispatchers.Default)
        SqlitePointQueue(dir.resolve("queue.db")).use { queue ->
            assertEquals(listOf(runId), queue.pendingRuns())
            val recorder = RunRecorder(nowhere, queue, later, settings = settings)
            recorder.reopen(runId)
            val state = withTimeout(10.seconds) { recorder.state.first { it.connection == Connection.BACKING_OFF } }
            assertEquals(RunPhase.STOPPING, state.phase)
            assertEquals(5, state.lastSeq)
            assertEquals(5, queue.pendingCount(runId))
            later.coroutineContext.job.cancelAndJoin()
        }
        nowhere.shutdownNow()
        Unit
    }
}
