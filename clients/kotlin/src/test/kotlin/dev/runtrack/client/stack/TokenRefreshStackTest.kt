package dev.runtrack.client.stack

import dev.runtrack.client.Connection
import dev.runtrack.client.RunPhase
import dev.runtrack.client.RunRecorder
import dev.runtrack.client.Tokens
import io.grpc.Status
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Tag
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.util.Collections
import kotlin.time.Duration.Companion.seconds

/**
 * The token hook as an app's sign-in backs it: it hands out the token it holds, and fetches a new one
 * only when asked to refresh. Envoy refuses an expired token (UNAUTHENTICATED); the recorder asks
 * the hook for a fresh one, and the run goes on.
 */
@Tag("stack")
class TokenRefreshStackTest {
    @TempDir
    lateinit var dir: Path

    private val stack = StackEnvironment.current

    /** An app's sign-in: [held] until a refresh is asked for, then a fresh token; every ask recorded. */
    private class SignIn(@Volatile var held: String, private val fresh: String) : Tokens {
        val asked: MutableList<Boolean> = Collections.synchronizedList(mutableListOf())

        override suspend fun bearer(refresh: Boolean): String {
            asked += refresh
            if (refresh) held = fresh
            return held
        }
    }

    @Test
    fun `an expired token is refused, the hook is asked to refresh, and the run completes`() = runBlocking {
        val signIn = SignIn(held = stack.expiredToken("refresher"), fresh = stack.token("refresher"))
        val fixes = trail(60, origin = 41.3874 to 2.1686)
        val channel = stack.channel()
        try {
            TestPhone(dir).use { phone ->
                val recorder = RunRecorder(channel, phone.queue, phone.scope, signIn, testSettings)
                val states = phone.scope.record(recorder.state)
                val runId = recorder.start()
                fixes.forEach(recorder::addPoint)
                withTimeout(60.seconds) { recorder.state.first { it.durableSeq == fixes.size } }

                assertEquals(false, signIn.asked.first(), "the first stream asked for the token it holds")
                assertTrue(true in signIn.asked, "then, refused, asked for a refresh: ${signIn.asked}")
                val refused = states.toList().mapNotNull { it.error }.firstOrNull()
                assertEquals(Status.Code.UNAUTHENTICATED, refused?.code, "Envoy refused the expired token: ${states.toList()}")

                val run = withTimeout(60.seconds) { recorder.stop() }
                withTimeout(60.seconds) { recorder.synced() }
                assertEquals(stack.user("refresher"), run.userId)
                assertEquals(fixes.size, run.overview.pointCount)
                val state = recorder.state.value
                assertEquals(RunPhase.STOPPED, state.phase)
                assertEquals(Connection.IDLE, state.connection)
                assertNull(state.error)

                val (stored, _) = storedTrail(channel, runId, stack.token("refresher"))
                assertEquals((1..fixes.size).toList(), stored.map { it.seq }, "nothing sent with the expired token was lost")
            }
        } finally {
            channel.shutdownNow()
        }
    }

    @Test
    fun `STOP RUN refused for a token that expired meanwhile is sent again with a fresh one`() = runBlocking {
        val signIn = SignIn(held = stack.token("refresher"), fresh = stack.token("refresher"))
        val fixes = trail(30, origin = 40.4168 to -3.7038)
        val channel = stack.channel()
        try {
            TestPhone(dir).use { phone ->
                val recorder = RunRecorder(channel, phone.queue, phone.scope, signIn, testSettings)
                val runId = recorder.start()
                fixes.forEach(recorder::addPoint)
                withTimeout(60.seconds) { recorder.state.first { it.durableSeq == fixes.size && it.connection == Connection.IDLE } }
                assertTrue(true !in signIn.asked, "no refresh needed so far: ${signIn.asked}")

                signIn.held = stack.expiredToken("refresher")  // the run lasted longer than the token
                val run = withTimeout(60.seconds) { recorder.stop() }
                assertEquals(runId, run.runId)
                assertTrue(true in signIn.asked, "STOP RUN, refused, asked for a refresh: ${signIn.asked}")
                withTimeout(60.seconds) { recorder.synced() }
                assertEquals(RunPhase.STOPPED, recorder.state.value.phase)
            }
        } finally {
            channel.shutdownNow()
        }
    }
}
