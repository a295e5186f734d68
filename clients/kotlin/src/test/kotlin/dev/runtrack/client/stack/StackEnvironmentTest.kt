package dev.runtrack.client.stack

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path

/** Without a stack described, the stack tests fail naming what is missing (runs with `verify`, no server). */
class StackEnvironmentTest {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `nothing set fails naming every missing setting`() {
        val error = assertThrows(IllegalStateException::class.java) { StackEnvironment.load { null } }
        val message = error.message.orEmpty()
        for (name in listOf("runtrack.endpoint (RUNTRACK_ENDPOINT)", "runtrack.ca (RUNTRACK_CA)", "runtrack.tokens (RUNTRACK_TOKENS)")) {
            assertTrue(name in message, "$name in: $message")
        }
        assertTrue("tests/integration/test_kotlin_stack.py" in message, message)
    }

    @Test
    fun `a bad endpoint, a missing file and a missing token are each named`() {
        val ca = Files.writeString(dir.resolve("ca.pem"), "-----BEGIN CERTIFICATE-----\n")
        val tokens = Files.writeString(dir.resolve("tokens.properties"), "user.runner=alice\ntoken.runner=a.b.c\n")
        fun load(vararg values: Pair<String, String>) = StackEnvironment.load(mapOf(*values)::get)

        val badEndpoint = assertThrows(IllegalStateException::class.java) {
            load("runtrack.endpoint" to "localhost", "runtrack.ca" to "$ca", "runtrack.tokens" to "$tokens")
        }
        assertEquals("runtrack.endpoint=localhost: expected HOST:PORT", badEndpoint.message)
        val noCa = assertThrows(IllegalStateException::class.java) {
            load("runtrack.endpoint" to "localhost:18443", "runtrack.ca" to "${dir.resolve("none.pem")}", "runtrack.tokens" to "$tokens")
        }
        assertTrue(noCa.message!!.startsWith("runtrack.ca="), noCa.message)

        val stack = load("runtrack.endpoint" to "localhost:18443", "runtrack.ca" to "$ca", "runtrack.tokens" to "$tokens")
        assertEquals("localhost", stack.host)
        assertEquals(18443, stack.port)
        assertEquals("alice", stack.user("runner"))
        assertEquals("a.b.c", stack.token("runner"))
        val noToken = assertThrows(IllegalStateException::class.java) { stack.expiredToken("runner") }
        assertTrue("expired.runner" in noToken.message.orEmpty(), noToken.message)
    }
}
