package dev.runtrack.client.stack

import dev.runtrack.client.Channels
import dev.runtrack.client.Connection
import dev.runtrack.client.Overview
import dev.runtrack.client.RunPhase
import dev.runtrack.client.RunRecorder
import dev.runtrack.client.Tokens
import dev.runtrack.client.toProto
import dev.runtrack.client.toSample
import io.grpc.Status
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Tag
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import runtrack.v1.SummaryServiceGrpcKt.SummaryServiceCoroutineStub
import runtrack.v1.Tracking.TrackPoint
import runtrack.v1.TrackingServiceGrpcKt.TrackingServiceCoroutineStub
import runtrack.v1.getRunRequest
import runtrack.v1.getTrackCursorRequest
import java.nio.file.Path
import kotlin.math.abs
import kotlin.time.Duration.Companion.seconds

/**
 * A run recorded by [RunRecorder] through the test stack's Envoy over TLS (the stack's own CA, as a
 * phone trusts a private CA), read back through the API: every point once, the run on the dashboard
 * with the overview the phone computed, and what the app's state showed on the way.
 */
@Tag("stack")
class RecordingStackTest {
    @TempDir
    lateinit var dir: Path

    private val stack = StackEnvironment.current

    @Test
    fun `a run recorded over TLS is stored once, stopped, and its overview agrees with the server's analysis`() = runBlocking {
        val token = stack.token("runner")
        val fixes = trail(300, origin = 47.3769 to 8.5417)
        val channel = stack.channel()
        try {
            TestPhone(dir).use { phone ->
                val recorder = RunRecorder(channel, phone.queue, phone.scope, Tokens { token }, testSettings)
                val runId = recorder.start()
                fixes.forEach(recorder::addPoint)
                withTimeout(60.seconds) { recorder.state.first { it.lastSeq == fixes.size } }
                val trail = phone.queue.trail(runId)
                val run = withTimeout(60.seconds) { recorder.stop(timeZone = "Europe/Zurich") }

                // StopRun answered with the overview the phone computed from its queue, as it sent it.
                val sent = Overview.of(trail.map { it.toSample() }, pointCount = fixes.size).toProto()
                assertEquals(runId, run.runId)
                assertEquals(stack.user("runner"), run.userId)
                assertEquals(sent, run.overview)
                assertEquals("/v1/runs/$runId/track", run.trackUrl)
                assertTrue(run.hasStoppedAt())

                withTimeout(60.seconds) { recorder.synced() }
                val (stored, pages) = storedTrail(channel, runId, token, pageSize = 64)
                assertEquals((1..fixes.size).toList(), stored.map { it.seq }, "every point stored exactly once, in order")
                assertEquals(5, pages, "300 points in pages of 64")
                // The store keeps a fix's time to the millisecond (a CQL timestamp); the phone's clock has finer.
                fun fixOf(point: TrackPoint) =
                    listOf(point.seq, point.time.seconds * 1_000 + point.time.nanos / 1_000_000, point.latitude, point.longitude, point.heartRateBpm)
                assertEquals(trail.map(::fixOf), stored.map(::fixOf), "the points as the phone recorded them")

                val dashboard = runWithAnalysis(channel, runId, token)
                assertEquals(run.withoutAnalysis(), dashboard.withoutAnalysis(), "GetRun shows the run StopRun answered")
                // The trust came from the stack's CA: a phone with only the system's CAs gets no answer.
                val untrusting = Channels.tls(stack.host, stack.port)
                try {
                    val refusal = refused("GetRun trusting the system's CAs only") {
                        SummaryServiceCoroutineStub(untrusting).getRun(getRunRequest { this.runId = runId }, bearer(token))
                    }
                    assertEquals(Status.Code.UNAVAILABLE, refusal.code, "$refusal")
                } finally {
                    untrusting.shutdownNow()
                }
                val overview = dashboard.overview
                val analysis = dashboard.analysis
                assertEquals(fixes.size, analysis.pointCount)
                assertTrue(overview.distanceM > 700.0, "about 850 m: ${overview.distanceM}")
                assertTrue(
                    abs(overview.distanceM - analysis.distanceM) <= 0.005 * analysis.distanceM,
                    "the phone's distance ${overview.distanceM} m within 0.5 % of the server's ${analysis.distanceM} m",
                )
            }
        } finally {
            channel.shutdownNow()
        }
    }

    @Test
    fun `the app sees points waiting while it records, then none, with every seq durable`() = runBlocking {
        val token = stack.token("runner")
        val fixes = trail(80, origin = 45.7640 to 4.8357)
        val half = fixes.size / 2
        val channel = stack.channel()
        try {
            TestPhone(dir).use { phone ->
                val recorder = RunRecorder(channel, phone.queue, phone.scope, Tokens { token }, testSettings)
                val states = phone.scope.record(recorder.state)
                val runId = recorder.start()
                // Half the run at about 25 fixes a second: they wait until a stream's answer says they are durable.
                for (fix in fixes.take(half)) {
                    recorder.addPoint(fix)
                    delay(40)
                }
                val recorded = withTimeout(30.seconds) { recorder.state.first { it.lastSeq == half } }
                assertTrue(recorded.waiting > 0, "just recorded, not yet known durable: $recorded")
                val durable = withTimeout(30.seconds) { recorder.state.first { it.durableSeq == half } }
                assertEquals(RunPhase.RECORDING, durable.phase, "durable while the run still records")
                assertEquals(0, durable.waiting)
                assertEquals(half, durable.lastSeq)
                val cursor = TrackingServiceCoroutineStub(channel).getTrackCursor(getTrackCursorRequest { this.runId = runId }, bearer(token))
                assertEquals(half, cursor.contiguousSeq, "durable on the phone means durable on the server")
                // The other half, then STOP RUN.
                for (fix in fixes.drop(half)) {
                    recorder.addPoint(fix)
                    delay(40)
                }
                withTimeout(30.seconds) { recorder.state.first { it.lastSeq == fixes.size } }
                withTimeout(60.seconds) { recorder.stop() }
                withTimeout(60.seconds) { recorder.synced() }

                val seen = states.toList()
                assertTrue(seen.any { it.phase == RunPhase.RECORDING && it.connection == Connection.STREAMING && it.waiting > 0 }, "$seen")
                assertTrue(seen.zipWithNext().all { (a, b) -> b.durableSeq >= a.durableSeq }, "durableSeq only moves forward")
                assertTrue(seen.any { it.phase == RunPhase.STOPPING })
                val last = recorder.state.value
                assertEquals(RunPhase.STOPPED, last.phase)
                assertEquals(0, last.waiting)
                assertEquals(fixes.size, last.durableSeq)
                assertEquals(fixes.size, last.lastSeq)
                assertEquals(Connection.IDLE, last.connection)
                assertEquals(0, last.rejected)
                assertNull(last.error, "no failure on the way")
                assertFalse(seen.any { it.connection == Connection.FAILED })
                assertNull(phone.queue.run(runId), "a run stopped and synced leaves the queue")

                val end = TrackingServiceCoroutineStub(channel).getTrackCursor(getTrackCursorRequest { this.runId = runId }, bearer(token))
                assertEquals(fixes.size, end.contiguousSeq)
                assertEquals(fixes.size, end.maxSeq)
                assertEquals(fixes.size, end.pointCount)
            }
        } finally {
            channel.shutdownNow()
        }
    }
}
